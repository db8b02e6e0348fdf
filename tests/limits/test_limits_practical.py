"""Layer-wise RTRL ("rtrl_layerwise") of the eLSTM stack and its gradient-fidelity diagnostic."""

import math

import torch

import rtrl_modules as rm
from rtrl_modules.limits import StackedELSTM, bptt_stacked, fidelity_sweep, gradient_fidelity, probe_loss


def test_fidelity_is_exact_at_depth_one_and_not_at_depth_two():
    one = gradient_fidelity(depth=1, hidden_size=6, steps=48)
    assert one["cosine"] > 1 - 1e-12 and one["relative_error"] < 1e-9
    assert math.isnan(one["cosine_lower"])
    two = gradient_fidelity(depth=2, hidden_size=6, steps=48)
    assert 0.0 < two["cosine"] < 1 - 1e-6 and two["relative_error"] > 1e-4
    assert two["cosine_lower"] < two["cosine"]  # the top layer's own gradient is exact
    exact = gradient_fidelity(depth=2, hidden_size=6, steps=48, gradient="rtrl")
    assert exact["relative_error"] < 1e-9


def test_one_segment_makes_the_layerwise_mode_exact():
    """Inside a segment the lower layers get BPTT through the stack: one segment = full BPTT."""
    report = gradient_fidelity(depth=2, hidden_size=5, steps=20, segment_length=20)
    assert report["relative_error"] < 1e-9


def test_truncated_lower_layers_are_worse_and_sweep_rows():
    rows = fidelity_sweep(depths=(2,), hidden_sizes=(5,), steps=(32,), segment_lengths=(4,))
    assert len(rows) == 1 and set(rows[0]) >= {"depth", "cosine", "relative_error", "cosine_lower"}
    trunc = gradient_fidelity(depth=2, hidden_size=5, steps=32, segment_length=4, lower_gradient="tbptt")
    assert trunc["relative_error_lower"] > rows[0]["relative_error_lower"]


def test_layerwise_mode_is_a_stack_of_library_cores():
    torch.manual_seed(0)
    stack = StackedELSTM(3, [5, 4], gradient="rtrl_layerwise")
    cores = [rm.ELSTM(3, 5), rm.ELSTM(5, 4)]
    for core, layer in zip(cores, stack.layers):
        core.load_state_dict(layer.state_dict())
    x, w = torch.randn(2, 9, 3), torch.randn(2, 9, 4)
    state, states = stack.initial_state(2), [c.initial_state(2) for c in cores]
    assert "cross" not in state["layer1"].keys()
    for sl in (slice(0, 4), slice(4, 9)):
        out, state = stack(x[:, sl], state)
        probe_loss(out, w[:, sl]).backward()
        h = x[:, sl]
        for i, core in enumerate(cores):
            h, states[i] = core(h, states[i])
        probe_loss(h, w[:, sl]).backward()
        torch.testing.assert_close(out, h)
    for core, layer in zip(cores, stack.layers):
        for p, q in zip(core.parameters(), layer.parameters()):
            torch.testing.assert_close(p.grad, q.grad)


def test_modes_run_under_no_grad_and_reference_shapes():
    stack = StackedELSTM(3, [4, 4, 2])
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        for mode in ("rtrl", "rtrl_layerwise", "tbptt"):
            out, state = stack(x, stack.initial_state(2), gradient=mode)
            assert out.shape == (2, 5, 2)
    out, final = bptt_stacked(stack, x, torch.zeros(2, 5, dtype=torch.bool))
    assert out.shape == (2, 5, 2) and [c.shape[-1] for c in final] == [4, 4, 2]
