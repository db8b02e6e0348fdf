"""The math of exact RTRL beyond one element-wise layer (docs/limits.md §1); no plumbing here.

Everything a segment needs besides the plain autograd unroll of the segment itself:

* :func:`inject_sensitivities`: an identity on the carried state c_0 whose backward adds
  Σ_b (∂L/∂c_0) · S_0 to the parameters' gradients (the segment form of RTRL, as in the core);
* :func:`rnn_sensitivity_step`: one step of the dense sensitivity recursion of a fully recurrent
  tanh RNN, O(N³) memory and O(N⁴) time;
* :func:`unit_index` / :func:`compact_to_dense`: the element-wise ("compact") sensitivities of an
  element-wise layer, flattened, and their dense [B, N, P] form;
* :func:`output_gate_derivatives`: the eLSTM read-out h = σ(O[x; c] + b_o) ⊙ c and its Jacobians,
  which is how a lower layer's parameters reach the next layer's state (dense cross-layer blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

Pullback = Callable[[Tensor], Sequence[Tensor | None]]


class _InjectSensitivities(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pullback: Pullback, c0: Tensor, *params: Tensor) -> Tensor:
        ctx.pullback = pullback
        return c0.clone()

    @staticmethod
    def backward(ctx, grad_c0: Tensor):
        grads = ctx.pullback(grad_c0)
        return (None, grad_c0 if ctx.needs_input_grad[1] else None, *grads)


def inject_sensitivities(c0: Tensor, params: Sequence[Tensor], pullback: Pullback) -> Tensor:
    """Return c0 [B, N] unchanged; on backward, params receive ``pullback(∂L/∂c0)`` (one per param).

    With ``pullback(g) = Σ_b g·S_0`` this turns the in-segment BPTT of a segment started from c0
    into the exact RTRL gradient: in-segment BPTT + Σ_b (∂L/∂c_0) · S_0.
    """
    return _InjectSensitivities.apply(pullback, c0, *params)


def contract_dense(grad_c0: Tensor, sens: Tensor) -> Tensor:
    """Σ_b Σ_i g[b, i] S[b, i, ...]: grad_c0 [B, N], sens [B, N, *P] → [*P]."""
    return torch.tensordot(grad_c0, sens, dims=([0, 1], [0, 1]))


def contract_compact(grad_c0: Tensor, sens_flat: Tensor, units: Tensor) -> Tensor:
    """Σ_b g[b, unit(p)] S[b, p]: the same contraction for an element-wise (compact) sensitivity.

    grad_c0 [B, N], sens_flat [B, P], units [P] (the hidden unit each parameter entry belongs to).
    """
    return (grad_c0[:, units] * sens_flat).sum(0)


# ----------------------------------------------------------------------------- fully recurrent RNN
def rnn_sensitivity_step(
    sens: dict[str, Tensor], x: Tensor, h_prev: Tensor, h: Tensor, keep: Tensor, weight_hh: Tensor
) -> dict[str, Tensor]:
    """One step of RTRL for h_t = tanh(W x_t + U h_{t-1} + b), S^θ_t = ∂h_t/∂θ (dense).

        S^θ_t = diag(1 − h_t²) (U · keep_t S^θ_{t-1} + ∂a_t/∂θ|immediate)

    with ∂a_t[k]/∂W[i, j] = δ_ki x_t[j], ∂a_t[k]/∂U[i, j] = δ_ki h_{t-1}[j], ∂a_t[k]/∂b[i] = δ_ki.

    Args:
        sens: "weight_ih" [B, N, N, D], "weight_hh" [B, N, N, N], "bias" [B, N, N].
        x [B, D]; h_prev [B, N] (already zero where an episode starts); h [B, N]; keep [B];
        weight_hh U [N, N].
    Returns:
        the new sensitivities (same shapes). The U product costs B·N⁴ multiply-adds.
    """
    batch, hidden = h.shape
    gain = (1 - h * h).unsqueeze(-1)  # [B, N, 1]
    immediate = {"weight_ih": x, "weight_hh": h_prev, "bias": None}
    out = {}
    for name, s in sens.items():
        flat = torch.matmul(weight_hh, s.reshape(batch, hidden, -1)) * keep.view(-1, 1, 1)  # [B, N, P]
        new = flat.view_as(s)
        diag = new.diagonal(dim1=1, dim2=2)  # [B, *rest, N]: entries with k = i
        if immediate[name] is None:
            diag += 1
        else:
            diag += immediate[name].unsqueeze(-1)
        out[name] = (flat * gain).view_as(s)
    return out


# ----------------------------------------------------------------------------- element-wise layers
def unit_index(shape: torch.Size | Sequence[int], hidden_size: int, unit_dim: int) -> Tensor:
    """Hidden unit of each entry of a parameter (flattened), [numel].

    ``unit_dim`` is the axis indexing units; an axis of size K·N (stacked gates) maps entry r to r mod N.
    """
    shape = tuple(shape)
    idx = torch.arange(shape[unit_dim]) % hidden_size
    view = [1] * len(shape)
    view[unit_dim] = shape[unit_dim]
    return idx.view(view).expand(shape).reshape(-1)


def compact_to_dense(jac: Tensor, sens_flat: Tensor, units: Tensor) -> Tensor:
    """(jac · ∂c/∂θ) as a dense block, when ∂c/∂θ is element-wise (compact).

    jac [B, M, N] (e.g. ∂h/∂c), sens_flat [B, P], units [P] → [B, M, P] with
    out[b, j, p] = jac[b, j, unit(p)] · S[b, p].
    """
    return jac[:, :, units] * sens_flat.unsqueeze(1)


def diagonal_to_dense(values: Tensor, units: Tensor, hidden_size: int) -> Tensor:
    """Dense [B, N, P] of a derivative that is nonzero only for unit(p) = row: values [B, P]."""
    mask = units.unsqueeze(0) == torch.arange(hidden_size, device=units.device).unsqueeze(1)
    return mask.to(values.dtype).unsqueeze(0) * values.unsqueeze(1)


def output_gate_derivatives(
    gate: nn.Linear | None, inp: Tensor, c: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Jacobians of h = σ(O [inp; c] + b_o) ⊙ c (or h = c without a gate) at one step.

    inp [B, D], c [B, N] → (∂h/∂c [B, N, N], ∂h/∂inp [B, N, D], immediate ∂h/∂(O, b_o) as per-unit
    values [B, N·(D+N) + N] (entry p belongs to unit p // (D+N) for O, p for b_o), or None).
    """
    batch, hidden = c.shape
    if gate is None:
        eye = torch.eye(hidden, dtype=c.dtype, device=c.device).expand(batch, hidden, hidden)
        return eye, c.new_zeros(batch, hidden, inp.shape[-1]), None
    both = torch.cat((inp, c), dim=-1)
    s = torch.sigmoid(gate(both))
    v = s * (1 - s) * c  # ∂h_j/∂g_j
    weight = gate.weight
    dh_dc = torch.diag_embed(s) + v.unsqueeze(-1) * weight[:, inp.shape[-1] :]
    dh_dinp = v.unsqueeze(-1) * weight[:, : inp.shape[-1]]
    immediate = torch.cat(((v.unsqueeze(-1) * both.unsqueeze(1)).reshape(batch, -1), v), dim=-1)
    return dh_dc, dh_dinp, immediate
