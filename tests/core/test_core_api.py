"""The core's contract besides gradient values: state, memory, acting, errors, composition."""

import pytest
import torch
from tensordict import TensorDict

import rtrl_modules as rm
from rtrl_modules.cells import ELSTMCell
from rtrl_modules.core.gradcheck import bptt_reference, saved_tensor_bytes


def test_state_size_does_not_depend_on_segment_length_and_matches_formula():
    core = rm.ELSTM(input_size=33, hidden_size=16)
    sizes = []
    for steps in (1, 10, 50):
        _, state = core(torch.randn(4, steps, 33), core.initial_state(4))
        sizes.append(sum(t.numel() for t in state.values(include_nested=True, leaves_only=True)))
    assert sizes[0] == sizes[1] == sizes[2]
    # c plus sensitivities of Z, F ([2N, D]), w_z, w_f, b_z, b_f: B·(2·N·D + 4·N) + B·N.
    assert sizes[0] == 4 * (2 * 16 * 33 + 4 * 16) + 4 * 16


@pytest.mark.parametrize("mode", ["rtrl", "rtrl_stepwise", "tbptt"])
def test_backward_memory_holds_no_per_step_sensitivities(mode):
    batch, hidden, inputs = 4, 16, 64
    core = rm.ELSTM(inputs, hidden)
    state = core.initial_state(batch)

    def run(steps):
        x = torch.randn(batch, steps, inputs, requires_grad=True)
        return saved_tensor_bytes(lambda: core(x, state, gradient=mode))

    growth_per_step = (run(40) - run(20)) / 20
    per_step_sensitivity = batch * 2 * hidden * inputs * 4
    # What grows with T is O(B·(D + c·N)) activations, far below one [B, 2N, D] sensitivity copy.
    assert growth_per_step < per_step_sensitivity / 4, (growth_per_step, per_step_sensitivity)


def test_acting_under_no_grad_computes_no_sensitivities():
    calls = []

    class CountingCell(ELSTMCell):
        def local_derivatives(self, pre, c_prev, params):
            calls.append(pre.shape)
            return super().local_derivatives(pre, c_prev, params)

    core = rm.RTRLCore(CountingCell(3, 4))
    state = core.initial_state(2, sensitivities=False)
    with torch.no_grad():
        for _ in range(3):
            out, state = core(torch.randn(2, 1, 3), state)
    assert calls == [] and "sensitivity" not in state.keys() and out.shape == (2, 1, 4)
    with torch.no_grad():  # asked for explicitly
        _, state = core(torch.randn(2, 1, 3), core.initial_state(2), track_sensitivities=True)
    assert len(calls) == 1 and "sensitivity" in state.keys()


def test_acting_step_by_step_equals_one_segment_forward():
    torch.manual_seed(0)
    core = rm.ELSTM(3, 5).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    is_init = torch.zeros(2, 6, dtype=torch.bool)
    is_init[0, 3] = True
    out_seg, state_seg = core(x, is_init=is_init)
    state, outs = None, []
    with torch.no_grad():
        for t in range(6):
            out, state = core(x[:, t : t + 1], state, is_init=is_init[:, t : t + 1])
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), out_seg.detach())
    torch.testing.assert_close(state["c"], state_seg["c"])


def test_returned_state_is_detached_and_tbptt_carries_no_sensitivities():
    core = rm.ELSTM(3, 4)
    _, state = core(torch.randn(2, 3, 3, requires_grad=True))
    assert all(not t.requires_grad for t in state.values(include_nested=True, leaves_only=True))
    _, state = core(torch.randn(2, 3, 3), gradient="tbptt")
    assert list(state.keys()) == ["c"]


def test_optimizer_clip_and_online_updates_compose():
    """T = 1 calls with an update after every step (fully online RTRL) train a tiny task."""
    torch.manual_seed(0)
    core = rm.ELSTM(2, 8, gradient="rtrl_stepwise")
    head = torch.nn.Linear(8, 1)
    params = [*core.parameters(), *head.parameters()]
    optimizer = torch.optim.RMSprop(params, lr=1e-2, alpha=0.99, eps=0.01)
    state = core.initial_state(16)
    losses = []
    x_prev = torch.zeros(16, 1, 1)
    for _ in range(600):
        x = torch.randint(0, 2, (16, 1, 1)).float()
        out, state = core(torch.cat((x, torch.ones_like(x)), -1), state)
        loss = (head(out) - x_prev).pow(2).mean()  # recall the previous input: needs the recurrence
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 40.0)
        optimizer.step()
        x_prev = x
        losses.append(loss.item())
    # Predicting the mean gives 0.25; below 0.12 the core must be remembering the last input.
    assert sum(losses[-100:]) / 100 < 0.12


def test_autocast_bfloat16_runs_the_core_in_parameter_dtype():
    core = rm.ELSTM(3, 4)
    x = torch.randn(2, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = torch.nn.functional.linear(x, torch.eye(3))  # bf16 under autocast
        out, state = core(projected, core.initial_state(2))
        out.float().sum().backward()
    assert state["sensitivity", "weight_ih"].dtype == torch.float32
    assert torch.isfinite(core.cell.weight_ih.grad).all()


@pytest.mark.parametrize(
    "make_call, error, match",
    [
        (lambda c: c(torch.randn(2, 3)), ValueError, r"shape \[B, T, D\]"),
        (lambda c: c(torch.randn(2, 3, 5)), ValueError, "input_size=3"),
        (lambda c: c(torch.randn(2, 3, 3, dtype=torch.float64)), TypeError, "dtype"),
        (lambda c: c(torch.ones(2, 3, 3, dtype=torch.long)), TypeError, "floating-point"),
        (
            lambda c: c(torch.randn(2, 3, 3), is_init=torch.zeros(2, 4, dtype=torch.bool)),
            ValueError,
            "is_init",
        ),
        (lambda c: c(torch.randn(2, 3, 3), is_init=torch.zeros(2, 3)), TypeError, "bool"),
        (lambda c: c(torch.randn(2, 3, 3), rm.ELSTM(3, 7).initial_state(2)), ValueError, "another size"),
        (lambda c: c(torch.randn(2, 3, 3), rm.ELSTM(5, 4).initial_state(2)), ValueError, "another size"),
        (lambda c: c(torch.randn(2, 3, 3), gradient="bptt"), ValueError, "rtrl, rtrl_stepwise, tbptt"),
        (lambda c: c(torch.full((2, 3, 3), float("nan"))), ValueError, "NaN"),
        (
            lambda c: c(torch.randn(2, 3, 3), c.initial_state(2, sensitivities=False)),
            KeyError,
            "sensitivities",
        ),
        (lambda c: c(torch.randn(2, 3, 3), {"c": torch.zeros(2, 4)}), TypeError, "TensorDict"),
        (lambda c: c(torch.randn(2, 3, 3), TensorDict({}, [2])), KeyError, "initial_state"),
    ],
)
def test_bad_input_gets_a_clear_error(make_call, error, match):
    with pytest.raises(error, match=match):
        make_call(rm.ELSTM(3, 4))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown gradient mode 'full'"):
        rm.ELSTM(3, 4, gradient="full")
    with pytest.raises(ValueError, match="positive"):
        rm.ELSTM(0, 4)
    with pytest.raises(TypeError, match="ElementwiseCell"):
        rm.RTRLCore(torch.nn.Linear(3, 4))


def test_missing_sensitivities_are_fine_when_every_sequence_starts_an_episode():
    core = rm.ELSTM(3, 4)
    state = core.initial_state(2, sensitivities=False)
    is_init = torch.zeros(2, 3, dtype=torch.bool)
    is_init[:, 0] = True
    _, state = core(torch.randn(2, 3, 3), state, is_init=is_init)
    assert "sensitivity" in state.keys()


@pytest.mark.parametrize("inputs, hidden", [(5, 6), (257, 64)])  # batched and per-example carry paths
def test_sensitivity_out_reuses_a_buffer_with_identical_results(inputs, hidden):
    torch.manual_seed(0)
    core = rm.ELSTM(inputs, hidden).double()
    xs = [torch.randn(3, steps, inputs, dtype=torch.float64) for steps in (4, 3, 5)]

    def run(double_buffer: bool):
        core.zero_grad()
        state = core.initial_state(3)
        buffers = [torch.empty(3, 2 * hidden, inputs, dtype=torch.float64) for _ in range(2)]
        for k, x in enumerate(xs):
            out_buffer = buffers[k % 2] if double_buffer else None
            out, state = core(x, state, sensitivity_out=out_buffer)
            out.pow(2).sum().backward()
            if double_buffer:
                assert state["sensitivity", "weight_ih"].data_ptr() == out_buffer.data_ptr()
        return state, {n: p.grad.clone() for n, p in core.named_parameters()}

    (state_a, grads_a), (state_b, grads_b) = run(False), run(True)
    torch.testing.assert_close(state_a["sensitivity", "weight_ih"], state_b["sensitivity", "weight_ih"])
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="shares memory"):
        core(xs[0], state_b, sensitivity_out=state_b["sensitivity", "weight_ih"])
    with pytest.raises(ValueError, match="shape"):
        core(xs[0], state_b, sensitivity_out=torch.empty(3, 5, inputs, dtype=torch.float64))


@pytest.mark.parametrize("inputs, hidden", [(5, 6), (257, 64)])  # batched and per-example carry paths
def test_plain_api_reuses_free_sensitivity_memory_and_never_a_live_one(inputs, hidden):
    """Without ``sensitivity_out`` the core writes S_T into memory of its own that nothing refers to
    any more; a state the caller keeps, or S_0 that a pending backward reads, is never overwritten."""
    torch.manual_seed(0)
    core = rm.ELSTM(inputs, hidden).double()
    lengths = (4, 1, 3, 5)
    x = torch.randn(3, sum(lengths), inputs, dtype=torch.float64)
    is_init = torch.zeros(3, sum(lengths), dtype=torch.bool)
    is_init[:, 0] = is_init[1, 6] = True
    weights = torch.randn(3, sum(lengths), hidden, dtype=torch.float64)
    starts = [sum(lengths[:k]) for k in range(len(lengths))]

    # The usual loop (backward per segment, the old state dropped): two buffers take turns.
    state, pointers = core.initial_state(3), []
    for start, length in zip(starts, lengths):
        sl = slice(start, start + length)
        out, state = core(x[:, sl], state, is_init=is_init[:, sl])
        (out * weights[:, sl]).sum().backward()
        pointers.append(state["sensitivity", "weight_ih"].data_ptr())
    assert pointers[2] == pointers[0] and pointers[3] == pointers[1] and pointers[0] != pointers[1]

    # Every state kept and one backward after all segments: nothing alive is reused, and the RTRL
    # gradient still equals full BPTT.
    core.zero_grad()
    state, kept, loss = core.initial_state(3), [], 0
    for start, length in zip(starts, lengths):
        sl = slice(start, start + length)
        out, state = core(x[:, sl], state, is_init=is_init[:, sl])
        kept.append((state, state["sensitivity", "weight_ih"].clone()))
        loss = loss + (out * weights[:, sl]).sum()
    loss.backward()
    got = {name: p.grad.clone() for name, p in core.named_parameters()}
    assert len({s["sensitivity", "weight_ih"].data_ptr() for s, _ in kept}) == len(lengths)
    for s, snapshot in kept:
        assert torch.equal(s["sensitivity", "weight_ih"], snapshot)
    core.zero_grad()
    out, _ = bptt_reference(core, x, is_init)
    (out * weights).sum().backward()
    for name, p in core.named_parameters():
        assert ((got[name] - p.grad).norm() / p.grad.norm()).item() <= 1e-9, name
