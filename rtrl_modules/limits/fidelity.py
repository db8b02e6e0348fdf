"""Full-BPTT references and gradient-fidelity diagnostics of the approximations.

The references share nothing with the RTRL code but the cells' ``step``/``output``: a plain
autograd unroll over the whole sequence.

    report = gradient_fidelity(depth=2, hidden_size=8, steps=64)   # layer-wise RTRL, online
    report["cosine"], report["relative_error"]                      # vs full BPTT
    approximate_fidelity("snap1", hidden_size=8, steps=64)          # dense RNN, approximate RTRL

With segments and no parameter update in between, exact RTRL equals full BPTT (tests/limits), so
"vs full BPTT" is also "vs exact RTRL".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .fully_recurrent import FullyRecurrentRNN
from .stacked import StackedELSTM


def bptt_rnn(
    model: FullyRecurrentRNN, x: Tensor, is_init: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Plain autograd unroll of the tanh RNN from h0 [B, N] (default zeros).

    x [B, T, D] → (h [B, T, N], h_T [B, N]).
    """
    h = x.new_zeros(x.shape[0], model.hidden_size) if h0 is None else h0
    hs = []
    for t in range(x.shape[1]):
        h_prev = torch.where(is_init[:, t, None], torch.zeros_like(h), h)
        h = torch.tanh(x[:, t] @ model.weight_ih.t() + h_prev @ model.recurrent_weight().t() + model.bias)
        hs.append(h)
    return torch.stack(hs, dim=1), h


def bptt_stacked(
    model: StackedELSTM, x: Tensor, is_init: Tensor, c0: Sequence[Tensor] | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Plain autograd unroll of the eLSTM stack from c0 (per layer [B, N_l]; default zeros).

    x [B, T, D] → (h of the top layer [B, T, N], c_T per layer).
    """
    inp, final = x, []
    for l, core in enumerate(model.layers):
        cell = core.cell
        c = x.new_zeros(x.shape[0], cell.hidden_size) if c0 is None else c0[l]
        cs = []
        for t in range(x.shape[1]):
            pre = (inp[:, t] @ cell.weight_ih.t()).view(-1, cell.num_gates, cell.hidden_size)
            c_prev = torch.where(is_init[:, t, None], torch.zeros_like(c), c)
            c = cell.step(pre, c_prev, **cell.recurrent_parameters())
            cs.append(c)
        inp = cell.output(inp, torch.stack(cs, dim=1))
        final.append(c)
    return inp, final


def probe_loss(out: Tensor, weights: Tensor) -> Tensor:
    """A loss with an error at every step that depends nonlinearly on the outputs."""
    return (out * weights).sum() + 0.3 * (out.sin() ** 2).sum()


def segments(steps: int, segment_length: int) -> list[slice]:
    return [slice(s, min(s + segment_length, steps)) for s in range(0, steps, segment_length)]


def _flat_grad(params: Iterable[Tensor]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def compare(got: Tensor, want: Tensor) -> dict[str, float]:
    """Cosine similarity and relative error ‖got − want‖ / ‖want‖ of two flat gradients."""
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(got, want, dim=0)),
        "relative_error": float((got - want).norm() / want.norm().clamp_min(1e-300)),
    }


def _segmented_vs_bptt(
    model: FullyRecurrentRNN | StackedELSTM,
    steps: int,
    segment_length: int,
    batch_size: int,
    seed: int,
    groups: dict[str, Sequence[Tensor]],
    gradient: str | None = None,
) -> dict[str, float]:
    """:func:`compare` of the segmented gradient vs full BPTT on one random sequence, no resets.

    Gradients are accumulated over segments of ``segment_length`` without updates, as in the
    reference; ``groups``: name → parameters, one report (``cosine{name}``, ``relative_error{name}``)
    each (an empty group gives NaN).
    """
    dtype = model._reference_parameter().dtype
    reference = bptt_rnn if isinstance(model, FullyRecurrentRNN) else bptt_stacked
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, steps, model.input_size, generator=gen, dtype=dtype)
    weights = torch.randn(batch_size, steps, model.output_size, generator=gen, dtype=dtype)
    is_init = torch.zeros(batch_size, steps, dtype=torch.bool)
    is_init[:, 0] = True

    model.zero_grad(set_to_none=False)
    probe_loss(reference(model, x, is_init)[0], weights).backward()
    want = {name: _flat_grad(ps) for name, ps in groups.items() if ps}

    model.zero_grad(set_to_none=False)
    state = model.initial_state(batch_size, gradient=gradient)
    for sl in segments(steps, segment_length):
        out, state = model(x[:, sl], state, is_init=is_init[:, sl], gradient=gradient)
        probe_loss(out, weights[:, sl]).backward()
    report = {}
    for name, ps in groups.items():
        got = compare(_flat_grad(ps), want[name]) if ps else {"cosine": math.nan, "relative_error": math.nan}
        report.update({key + name: value for key, value in got.items()})
    return report


def gradient_fidelity(
    depth: int,
    hidden_size: int,
    steps: int,
    segment_length: int = 1,
    input_size: int = 4,
    batch_size: int = 4,
    gradient: str = "rtrl_layerwise",
    lower_gradient: str = "rtrl",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """Gradient of a ``depth``-layer eLSTM stack in ``gradient`` mode vs full BPTT, one sequence.

    The sequence of ``steps`` steps is cut into segments of ``segment_length`` (1 = fully online:
    every cross-layer temporal term dropped); gradients are accumulated over the segments with
    no parameter update, as in the BPTT reference. Returns ``cosine`` / ``relative_error`` over
    all parameters, and ``cosine_lower`` / ``relative_error_lower`` over the layers below the top
    (NaN at depth 1).
    """
    torch.manual_seed(seed)
    model = StackedELSTM(input_size, [hidden_size] * depth, gradient=gradient, lower_gradient=lower_gradient)
    model = model.to(dtype)
    groups = {
        "": list(model.parameters()),
        "_lower": [p for core in model.layers[:-1] for p in core.parameters()],
    }
    return _segmented_vs_bptt(model, steps, segment_length, batch_size, seed, groups)


def approximate_fidelity(
    gradient: str,
    hidden_size: int,
    steps: int,
    segment_length: int = 1,
    density: float = 1.0,
    input_size: int = 4,
    batch_size: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    """Gradient of a :class:`FullyRecurrentRNN` in ``gradient`` mode (e.g. ``"snap1"``, ``"uoro"``)
    vs full BPTT (= exact RTRL), one sequence of ``steps`` cut into segments of ``segment_length``.

    Returns ``cosine`` / ``relative_error`` over all parameters and ``cosine_hh`` /
    ``relative_error_hh`` over U alone (the recurrent weights, where the approximations differ most).
    A UORO report is one draw (B = ``batch_size`` independent estimates summed); vary ``seed``.
    """
    torch.manual_seed(seed)
    model = FullyRecurrentRNN(input_size, hidden_size, gradient=gradient, density=density).to(dtype)
    groups = {"": list(model.parameters()), "_hh": [model.weight_hh]}
    return _segmented_vs_bptt(model, steps, segment_length, batch_size, seed, groups, gradient)


def fidelity_sweep(
    depths: Sequence[int] = (1, 2, 3),
    hidden_sizes: Sequence[int] = (8,),
    steps: Sequence[int] = (64,),
    segment_lengths: Sequence[int] = (1,),
    **kwargs,
) -> list[dict[str, float]]:
    """:func:`gradient_fidelity` over a grid; one row (settings + results) per combination."""
    rows = []
    for depth in depths:
        for n in hidden_sizes:
            for t in steps:
                for m in segment_lengths:
                    row = {"depth": depth, "hidden_size": n, "steps": t, "segment_length": m}
                    row.update(gradient_fidelity(depth, n, t, segment_length=m, **kwargs))
                    rows.append(row)
    return rows


def approximate_sweep(
    gradients: Sequence[str] = ("snap1", "snap2", "uoro", "tbptt"),
    hidden_sizes: Sequence[int] = (8,),
    steps: Sequence[int] = (64,),
    segment_lengths: Sequence[int] = (1,),
    seeds: Sequence[int] = (0,),
    **kwargs,
) -> list[dict[str, float]]:
    """:func:`approximate_fidelity` over a grid, averaged over ``seeds``; one row per combination."""
    rows = []
    for gradient in gradients:
        for n in hidden_sizes:
            for t in steps:
                for m in segment_lengths:
                    reports = [approximate_fidelity(gradient, n, t, m, seed=s, **kwargs) for s in seeds]
                    row = {"gradient": gradient, "hidden_size": n, "steps": t, "segment_length": m}
                    row.update({k: sum(r[k] for r in reports) / len(reports) for k in reports[0]})
                    rows.append(row)
    return rows
