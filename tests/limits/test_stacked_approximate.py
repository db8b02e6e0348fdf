"""UORO for the eLSTM stack's cross-layer blocks (``StackedELSTM(..., gradient="rtrl_uoro")``): exact
with one layer, unbiased with several, O(N + P) carried numbers per cross block."""

import pytest
import torch
from test_limits_exact import SPLITS, rel, segment_grads

from rtrl_modules.limits import StackedELSTM, bptt_stacked, probe_loss

VALID = "valid choices are rtrl, rtrl_layerwise, rtrl_uoro, tbptt"


@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_one_layer_uoro_mode_is_exact_rtrl(split):
    """One layer has no cross block: the mode is exact element-wise RTRL (= full BPTT)."""
    torch.manual_seed(0)
    model = StackedELSTM(3, [5], gradient="rtrl_uoro").double()
    got, full, truncated = segment_grads(model, split, "rtrl_uoro")
    assert max(rel(got, full).values()) <= 1e-9
    assert max(rel(truncated, full).values()) > 1e-3  # the check has power


def test_one_segment_is_exact_with_cross_blocks():
    """Nothing crosses a segment boundary: in-segment BPTT through the whole stack is exact."""
    torch.manual_seed(0)
    model = StackedELSTM(3, [4, 3, 3], gradient="rtrl_uoro").double()
    got, full, _ = segment_grads(model, (9,), "rtrl_uoro")
    assert max(rel(got, full).values()) <= 1e-9


@pytest.mark.parametrize(
    ("sizes", "output_gate"), [([3, 3], True), ([3, 2, 3], True), ([3, 3], False)], ids=str
)
def test_uoro_cross_blocks_are_unbiased(sizes, output_gate):
    """Fully online (1-step segments), fixed parameters and sequence: the mean of 40 groups × 64
    independent estimates is within 5 standard errors of exact multi-layer RTRL in every coordinate;
    layer-wise RTRL (biased: cross-layer temporal terms dropped) fails the same check."""
    torch.manual_seed(0)
    model = StackedELSTM(2, sizes, output_gate=output_gate).double()
    steps, copies, groups = 6, 64, 40
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, steps, 2, generator=gen, dtype=torch.float64)
    weights = torch.randn(1, steps, sizes[-1], generator=gen, dtype=torch.float64)
    is_init = torch.zeros(1, steps, dtype=torch.bool)
    is_init[:, 0] = True

    def flat_grad() -> torch.Tensor:
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        model.zero_grad(set_to_none=False)
        return g

    model.zero_grad(set_to_none=False)
    probe_loss(bptt_stacked(model, x, is_init)[0], weights).backward()
    exact = flat_grad()

    def online(gradient: str, batch: int) -> torch.Tensor:
        state = model.initial_state(batch, gradient=gradient)
        xb, wb, ib = x.expand(batch, -1, -1), weights.expand(batch, -1, -1), is_init.expand(batch, -1)
        for t in range(steps):
            out, state = model(xb[:, t : t + 1], state, is_init=ib[:, t : t + 1], gradient=gradient)
            probe_loss(out, wb[:, t : t + 1]).backward()
        return flat_grad() / batch

    assert max(rel({"g": online("rtrl", 1)}, {"g": exact}).values()) <= 1e-9  # the reference
    torch.manual_seed(2)
    means = torch.stack([online("rtrl_uoro", copies) for _ in range(groups)])  # each: mean of 64
    mean, se = means.mean(0), means.std(0) / groups**0.5
    noisy = se > 1e-12  # the top layer's gradient has no cross block: exact in every estimate
    assert noisy.sum() >= exact.numel() // 3 and (mean - exact)[~noisy].abs().max() <= 1e-9
    assert ((mean - exact).abs()[noisy] / se[noisy]).max() < 5
    biased = online("rtrl_layerwise", 1)
    assert ((biased - exact).abs()[noisy] / se[noisy]).max() > 5  # power: a biased method fails
    single = online("rtrl_uoro", 1)
    assert (single - exact).norm() > 5 * (mean - exact).norm()  # one estimate is noisy


def test_uoro_state_is_n_plus_p_per_cross_block():
    stack = StackedELSTM(3, [5, 4, 6], gradient="rtrl_uoro")
    shapes = stack.cross_shapes()  # (l, m) → [N_l, P_m]
    state = stack.initial_state(2)
    for (l, m), (n, p) in shapes.items():
        block = state[f"layer{l}", "cross_uoro", f"layer{m}"]
        assert sum(t[0].numel() for t in block.values()) == n + p  # s̃ [N_l] and θ̃ [P_m]
        assert block["state_factor"].shape == (2, n) and block["param_factor"].shape == (2, p)
    assert "cross" not in state["layer2"].keys()  # no dense block
    exact = stack.initial_state(2, gradient="rtrl")
    assert exact["layer2", "cross", "layer0"].shape == (2, *shapes[2, 0])  # N_l·P_m
    assert "cross_uoro" not in exact["layer2"].keys()
    own = {k for k in stack.sensitivity_keys(cross=False)}
    assert own <= set(state.keys(include_nested=True, leaves_only=True))  # own blocks unchanged
    x = torch.randn(2, 3, 3)
    out, new = stack(x[:, :2], state)
    out.square().sum().backward()
    out, new = stack(x[:, 2:], new)
    out.square().sum().backward()
    assert set(new.keys(include_nested=True, leaves_only=True)) == set(
        state.keys(include_nested=True, leaves_only=True)
    )
    assert not new["layer2", "cross_uoro", "layer1", "param_factor"].requires_grad
    assert all(torch.isfinite(p.grad).all() for p in stack.parameters())
    with torch.no_grad():
        out, _ = stack(x, stack.initial_state(2))
    assert out.shape == (2, 3, 6)


def test_modes_and_errors():
    with pytest.raises(ValueError, match=f"unknown gradient mode 'uoro'; {VALID}$"):
        StackedELSTM(3, [4, 4], gradient="uoro")
    stack = StackedELSTM(3, [4, 4])
    x = torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match=f"unknown gradient mode 'snap1'; {VALID}$"):
        stack(x, gradient="snap1")
    with pytest.raises(ValueError, match=f"unknown gradient mode 'kfrtrl'; {VALID}$"):
        stack.initial_state(2, gradient="kfrtrl")
    exact_state = stack.initial_state(2)  # default mode "rtrl": dense blocks
    with pytest.raises(KeyError, match=r"gradient='rtrl_uoro'.*'cross_uoro'.*gradient=mode"):
        stack(x, exact_state, gradient="rtrl_uoro")
    is_init = torch.zeros(2, 3, dtype=torch.bool)
    is_init[:, 0] = True
    _, new = stack(x, exact_state, is_init=is_init, gradient="rtrl_uoro")  # all start: zero is exact
    assert new["layer1", "cross_uoro", "layer0", "state_factor"].shape == (2, 4)
    assert "rtrl_uoro" in repr(StackedELSTM(3, [4, 4], gradient="rtrl_uoro"))
