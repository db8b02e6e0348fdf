"""Full-BPTT references and the gradient-fidelity diagnostic of layer-wise RTRL (``"rtrl_layerwise"``).

The references share nothing with the RTRL code but the cells' ``step``/``output``: a plain
autograd unroll over the whole sequence.

    report = gradient_fidelity(depth=2, hidden_size=8, steps=64)   # layer-wise RTRL, online
    report["cosine"], report["relative_error"]                      # vs full BPTT
"""

from __future__ import annotations

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
        h = torch.tanh(x[:, t] @ model.weight_ih.t() + h_prev @ model.weight_hh.t() + model.bias)
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
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, steps, input_size, generator=gen, dtype=dtype)
    weights = torch.randn(batch_size, steps, hidden_size, generator=gen, dtype=dtype)
    is_init = torch.zeros(batch_size, steps, dtype=torch.bool)
    is_init[:, 0] = True
    params = list(model.parameters())
    lower = [p for core in model.layers[:-1] for p in core.parameters()]

    model.zero_grad(set_to_none=False)
    probe_loss(bptt_stacked(model, x, is_init)[0], weights).backward()
    want, want_lower = _flat_grad(params), _flat_grad(lower) if lower else None

    model.zero_grad(set_to_none=False)
    state = model.initial_state(batch_size)
    for sl in segments(steps, segment_length):
        out, state = model(x[:, sl], state, is_init=is_init[:, sl])
        probe_loss(out, weights[:, sl]).backward()
    report = compare(_flat_grad(params), want)
    nan = float("nan")
    below = compare(_flat_grad(lower), want_lower) if lower else {"cosine": nan, "relative_error": nan}
    report.update({"cosine_lower": below["cosine"], "relative_error_lower": below["relative_error"]})
    return report


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
