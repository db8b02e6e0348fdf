"""Exact dense RTRL (fully recurrent RNN, eLSTM stack) equals full BPTT in float64 (≤ 1e-9)."""

import pytest
import torch
from tensordict import TensorDict

from rtrl_modules.core.gradcheck import random_resets
from rtrl_modules.limits import FullyRecurrentRNN, StackedELSTM, bptt_rnn, bptt_stacked, probe_loss

SPLITS = [(5, 1, 7, 3), (2, 9, 4), (1, 1, 1, 1, 1, 1)]


def segment_grads(model, split, gradient, batch=4, seed=1):
    """(segmented gradients in ``gradient`` mode, full-BPTT gradients, truncated-BPTT gradients)."""
    gen = torch.Generator().manual_seed(seed)
    steps = sum(split)
    starts = [sum(split[:i]) for i in range(len(split))]
    x = torch.randn(batch, steps, model.input_size, generator=gen, dtype=torch.float64)
    is_init = random_resets(batch, steps, starts, gen)
    assert is_init[:, 1:].any(), "resets inside segments"
    weights = torch.randn(batch, steps, model.output_size, generator=gen, dtype=torch.float64)
    reference = bptt_rnn if isinstance(model, FullyRecurrentRNN) else bptt_stacked

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=False)
        return out

    model.zero_grad(set_to_none=False)
    probe_loss(reference(model, x, is_init)[0], weights).backward()
    full = grads()
    c0 = None  # truncated BPTT: each segment starts from the true state, as a constant
    for s, n in zip(starts, split):
        out, c0 = reference(model, x[:, s : s + n], is_init[:, s : s + n], c0)
        probe_loss(out, weights[:, s : s + n]).backward()
        c0 = c0.detach() if isinstance(c0, torch.Tensor) else [c.detach() for c in c0]
    truncated = grads()
    state = model.initial_state(batch)
    for s, n in zip(starts, split):
        out, state = model(x[:, s : s + n], state, is_init=is_init[:, s : s + n], gradient=gradient)
        probe_loss(out, weights[:, s : s + n]).backward()
    return grads(), full, truncated


def rel(got, want):
    return {n: float((got[n] - want[n]).norm() / want[n].norm()) for n in want}


@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_fully_recurrent_rtrl_equals_bptt(split):
    torch.manual_seed(0)
    model = FullyRecurrentRNN(3, 5).double()
    got, full, truncated = segment_grads(model, split, "rtrl")
    assert max(rel(got, full).values()) <= 1e-9
    assert max(rel(truncated, full).values()) > 1e-3  # the check has power


@pytest.mark.parametrize("split", SPLITS, ids=str)
@pytest.mark.parametrize("output_gate", [True, False], ids=["gate", "nogate"])
def test_two_layer_exact_rtrl_equals_bptt(split, output_gate):
    torch.manual_seed(0)
    model = StackedELSTM(3, [5, 4], output_gate=output_gate).double()
    got, full, truncated = segment_grads(model, split, "rtrl")
    assert max(rel(got, full).values()) <= 1e-9
    assert rel(truncated, full)["layers.0.cell.weight_ih"] > 1e-3


def test_three_layer_exact_rtrl_equals_bptt():
    torch.manual_seed(2)
    model = StackedELSTM(2, [4, 3, 3]).double()
    got, full, _ = segment_grads(model, (4, 3, 5), "rtrl", batch=3)
    assert max(rel(got, full).values()) <= 1e-9


def test_tbptt_modes_equal_truncated_bptt():
    torch.manual_seed(0)
    for model in (FullyRecurrentRNN(3, 5).double(), StackedELSTM(3, [5, 4]).double()):
        got, _, truncated = segment_grads(model, (5, 1, 7, 3), "tbptt")
        assert max(rel(got, truncated).values()) <= 1e-9


def test_float32_within_1e_4():
    torch.manual_seed(0)
    for model in (FullyRecurrentRNN(3, 5), StackedELSTM(3, [5, 4])):
        model.double()
        _, full, _ = segment_grads(model, (5, 1, 7), "rtrl")
        model.float()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(4, 13, model.input_size, generator=gen, dtype=torch.float64)
        is_init = random_resets(4, 13, [0, 5, 6], gen)
        weights = torch.randn(4, 13, model.output_size, generator=gen, dtype=torch.float64)
        model.zero_grad(set_to_none=False)
        state = model.initial_state(4)
        for s, n in zip((0, 5, 6), (5, 1, 7)):
            out, state = model(x[:, s : s + n].float(), state, is_init=is_init[:, s : s + n])
            probe_loss(out, weights[:, s : s + n].float()).backward()
        got = {n: p.grad.double() for n, p in model.named_parameters()}
        assert max(rel(got, full).values()) <= 1e-4


def test_dense_state_shapes_and_errors():
    rnn = FullyRecurrentRNN(3, 5)
    state = rnn.initial_state(2)
    assert state["sensitivity", "weight_hh"].shape == (2, 5, 5, 5)  # O(N³) per example
    assert state["sensitivity", "weight_ih"].shape == (2, 5, 5, 3)
    with pytest.raises(ValueError, match="gradient mode"):
        rnn(torch.randn(2, 3, 3), state, gradient="rtrl_stepwise")
    with pytest.raises(ValueError, match="input_size=3"):
        rnn(torch.randn(2, 3, 4), state)
    stack = StackedELSTM(3, [5, 4])
    state = stack.initial_state(2)
    assert state["layer1", "cross", "layer0"].shape == (2, 4, 2 * 5 * 3 + 2 * 5 * 2 + 5 * 8 + 5)
    assert "cross" not in state["layer0"].keys()
    no_cross = TensorDict({k: state[k].exclude("cross") for k in ("layer0", "layer1")}, batch_size=[2])
    x = torch.randn(2, 3, 3)
    with pytest.raises(KeyError, match="cross-layer"):
        stack(x, no_cross)
    is_init = torch.zeros(2, 3, dtype=torch.bool)
    is_init[:, 0] = True
    out, new = stack(x, no_cross, is_init=is_init)  # every sequence starts: zero blocks are exact
    assert out.shape == (2, 3, 4) and new["layer1", "cross", "layer0"].shape == (2, 4, 95)
    assert not new["layer1", "cross", "layer0"].requires_grad
