"""Gradient check of an RTRL core against backpropagation through time (BPTT).

The reference here shares nothing with the RTRL machinery but ``cell.step`` and ``cell.output``:
it unrolls the cell with plain autograd over the whole sequence (full BPTT) or per segment
(truncated BPTT). Built-in cells are tested with it, and a user-defined cell should be too:

    report = check_rtrl_gradients(RTRLCore(MyCell(3, 5)).double())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .recurrent import RTRLCore


def bptt_reference(
    core: RTRLCore, x: Tensor, is_init: Tensor, c0: Tensor | None = None, restart: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Plain autograd unroll of ``core`` over x [B, T, D] (no RTRL code): (out [B, T, N'], c_T [B, N]).

    At ``is_init`` steps the state restarts from zero, or from ``restart[:, t]`` ([B, T, N], a constant).
    Block cores (``BlockRTRLCore``) work the same way with the state shape [m, N] in place of [N]."""
    cell = core.cell
    batch, steps, _ = x.shape
    shape = core.state_shapes()["c"]  # [N], or [m, N] for a block cell
    c = x.new_zeros(batch, *shape) if c0 is None else c0
    pre = (x @ cell.weight_ih.t()).view(batch, steps, cell.num_gates, *shape)
    states = []
    for t in range(steps):
        start = is_init[:, t].view(batch, *[1] * len(shape))
        fresh = torch.zeros_like(c) if restart is None else restart[:, t].detach()
        c = cell.step(pre[:, t], torch.where(start, fresh, c), **cell.recurrent_parameters())
        states.append(c)
    return cell.output(x, torch.stack(states, dim=1)), c


def random_resets(batch: int, steps: int, boundaries: Sequence[int], generator: torch.Generator) -> Tensor:
    """is_init [B, T]: episode starts at t = 0 for half the batch, at some segment starts, inside
    segments, and at different steps for different batch elements."""
    is_init = torch.rand(batch, steps, generator=generator) < 0.12
    is_init[: batch // 2, 0] = True
    for start in boundaries[1:2]:  # one segment start where some sequences reset
        is_init[0, start] = True
    return is_init


def _loss(out: Tensor, weights: Tensor) -> Tensor:
    # A nonlinear functional, so the error at each step depends on the outputs.
    return (out * weights).sum() + 0.3 * (out.sin() ** 2).sum()


def _grads(core: RTRLCore, x: Tensor) -> dict[str, Tensor]:
    grads = {name: p.grad.clone() for name, p in core.named_parameters()}
    grads["<input x>"] = x.grad.clone()
    return grads


def _relative_errors(got: dict[str, Tensor], want: dict[str, Tensor]) -> dict[str, float]:
    return {
        name: float((got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-300)) for name in want
    }


def check_rtrl_gradients(
    core: RTRLCore,
    batch_size: int = 4,
    segment_lengths: Sequence[int] = (5, 1, 7, 3),
    modes: Sequence[str] = ("rtrl", "rtrl_stepwise", "tbptt"),
    tolerance: float | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Check every mode of ``core`` against BPTT; raise AssertionError on a mismatch.

    The sequence is split into segments of the given (unequal) lengths, with episode resets inside
    segments, at segment starts and at different steps per batch element. RTRL modes must equal
    full BPTT for every parameter; ``"tbptt"`` must equal BPTT truncated at the segment starts;
    every mode gives x its in-segment (truncated) gradient.

    Returns the relative errors, by mode and parameter. Tolerance defaults to 1e-9 in float64 and
    1e-4 in float32. Runs on the core's device (the data is drawn on the CPU, so it is the same on
    every device).
    """
    dtype, device = core.cell.weight_ih.dtype, core.cell.weight_ih.device
    if tolerance is None:
        tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    gen = torch.Generator().manual_seed(seed)  # the same data on every device
    steps = sum(segment_lengths)
    starts = [sum(segment_lengths[:i]) for i in range(len(segment_lengths))]
    x = torch.randn(batch_size, steps, core.input_size, generator=gen, dtype=dtype).to(device)
    is_init = random_resets(batch_size, steps, starts, gen).to(device)
    weights = torch.randn(batch_size, steps, core.output_size, generator=gen, dtype=dtype).to(device)

    def reference(truncated: bool) -> dict[str, Tensor]:
        core.zero_grad(set_to_none=False)
        x_ref = x.clone().requires_grad_(True)
        spans = zip(starts, segment_lengths) if truncated else [(0, steps)]
        c0 = None
        for start, length in spans:
            sl = slice(start, start + length)
            if truncated and c0 is not None:
                c0 = c0.detach()
            out, c_last = bptt_reference(core, x_ref[:, sl], is_init[:, sl], c0)
            _loss(out, weights[:, sl]).backward()
            c0 = c_last
        return _grads(core, x_ref)

    full, truncated = reference(truncated=False), reference(truncated=True)
    report = {}
    for mode in modes:
        core.zero_grad(set_to_none=False)
        x_in = x.clone().requires_grad_(True)
        state = core.initial_state(batch_size)
        for start, length in zip(starts, segment_lengths):
            sl = slice(start, start + length)
            out, state = core(x_in[:, sl], state, is_init=is_init[:, sl], gradient=mode)
            _loss(out, weights[:, sl]).backward()
        got = _grads(core, x_in)
        want = truncated if mode == "tbptt" else {**full, "<input x>": truncated["<input x>"]}
        errors = _relative_errors(got, want)
        report[mode] = errors
        bad = {name: err for name, err in errors.items() if not err <= tolerance}
        if bad:
            raise AssertionError(f"gradient mode {mode!r} differs from BPTT beyond {tolerance:g}: {bad}")
    return report


def check_restart_gradients(
    core: RTRLCore,
    gradient: str = "rtrl",
    batch_size: int = 4,
    segment_lengths: Sequence[int] = (4, 1, 6, 3),
    seed: int = 4,
    tolerance: float = 1e-9,
) -> dict[str, float]:
    """``restart_state``: at ``is_init`` steps the state restarts from a given constant instead of
    zero. Across segments with carried sensitivities, ``gradient`` must equal BPTT that restarts
    there too (float64; an episode start inside the sequence and one at a segment start).

    Returns the relative errors by parameter; raises AssertionError beyond ``tolerance``.
    """
    dtype, device = core.cell.weight_ih.dtype, core.cell.weight_ih.device
    gen = torch.Generator().manual_seed(seed)
    steps = sum(segment_lengths)
    x = torch.randn(batch_size, steps, core.input_size, dtype=dtype, generator=gen)
    is_init = torch.rand(batch_size, steps, generator=gen) < 0.2
    is_init[:, 0] = True
    is_init[1, segment_lengths[0]] = True  # at a segment start
    restart = torch.randn(batch_size, steps, *core.state_shapes()["c"], dtype=dtype, generator=gen)
    restart[:, 0] = 0
    weights = torch.randn(batch_size, steps, core.output_size, dtype=dtype, generator=gen)
    x, is_init, restart, weights = (t.to(device) for t in (x, is_init, restart, weights))
    if not bool((restart[is_init] != 0).any()):
        raise AssertionError("the restarts are all zero: the check would have no teeth")

    core.zero_grad()
    state, start = core.initial_state(batch_size), 0
    for length in segment_lengths:
        window = slice(start, start + length)
        out, state = core(x[:, window], state, is_init[:, window], gradient, restart_state=restart[:, window])
        _loss(out, weights[:, window]).backward()
        start += length
    got = {name: p.grad.clone() for name, p in core.named_parameters()}
    core.zero_grad()
    out, _ = bptt_reference(core, x, is_init, restart=restart)
    _loss(out, weights).backward()
    errors = _relative_errors(got, {name: p.grad for name, p in core.named_parameters()})
    bad = {name: err for name, err in errors.items() if not err <= tolerance}
    if bad:
        raise AssertionError(f"{gradient!r} with restarts differs from BPTT beyond {tolerance:g}: {bad}")
    return errors


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps for backward while ``fn()`` runs (a memory diagnostic)."""
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total
