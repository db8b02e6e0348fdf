"""Exact RTRL for block-diagonal element-wise cells, as one ``torch.autograd.Function`` per segment.

The block version of :mod:`rtrl_modules.core.functional` (docs/math.md §6). A unit's state is a
vector of m numbers (c [B, m, N]) and J_t = ∂c_t/∂c_{t-1} is N blocks of m × m ([B, m, m, N]), so
"⊙ J" becomes a batch of small matrix products. Every sensitivity is handled in one canonical layout,
[B, m, S, N, E]: m state components, S rows per unit (K·m gate rows for ``weight_ih``, the leading
size of a [..., N] parameter), N units, E = D columns for ``weight_ih`` (else 1). Modes:

* ``"rtrl"``           in-segment BPTT + Σ_b (∂L/∂c_0)ᵀ S_0, and S_T by the segment form
                       S_T = A_{1:T} S_0 + Σ_k A_{k+1:T} (∂c_k/∂a_k) x_kᵀ,  A_{k+1:T} = J_T ⋯ J_{k+1};
* ``"rtrl_stepwise"``  Σ_t e_tᵀ S_t with S_t = J_t S_{t-1} + local_t step by step (re-run in backward);
* ``"tbptt"``          in-segment BPTT only.

In-segment BPTT is the linear recurrence δ_t = g_t + J_{t+1}ᵀ δ_{t+1}. Episode starts (``keep`` = 0)
zero J_t, so state, BPTT and sensitivities restart there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..cells.block import BlockElementwiseCell
from .functional import GradientMode


def _mask(keep: Tensor, like: Tensor) -> Tensor:
    """keep [B] or [B, T] viewed to broadcast against a state-shaped ``like`` [B, (T,) m, N]."""
    return keep.view(*keep.shape, *([1] * (like.dim() - keep.dim())))


def unroll_blocks(
    cell: BlockElementwiseCell,
    pre: Tensor,
    c0: Tensor,
    keep: Tensor,
    params: dict[str, Tensor],
    restart: Tensor | None = None,
) -> Tensor:
    """Run ``cell.step`` over time: pre [B, T, K, m, N], c0 [B, m, N], keep [B, T] → c [B, T, m, N].

    Where ``keep`` is 0 the step starts from ``restart[:, t]`` ([B, T, m, N]; zeros when None).
    """
    c_seq = pre.new_empty(pre.shape[0], pre.shape[1], *pre.shape[-2:])
    c = c0
    for t in range(pre.shape[1]):
        k = _mask(keep[:, t], c)
        c = c * k if restart is None else c * k + (1 - k) * restart[:, t]
        c = cell.step(pre[:, t], c, **params)
        c_seq[:, t] = c
    return c_seq


def _previous_states(c0: Tensor, c_seq: Tensor, keep: Tensor, restart: Tensor | None) -> Tensor:
    """c_{t-1} as seen by step t: [B, T, m, N]."""
    k = _mask(keep, c_seq)
    prev = torch.cat((c0.unsqueeze(1), c_seq[:, :-1]), dim=1) * k
    return prev if restart is None else prev + (1 - k) * restart


# ----------------------------------------------------------------------------- block algebra
def block_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Per-unit matrix product of blocks: a [..., m, m, N] @ b [..., m, m, N]."""
    return torch.einsum("...ijn,...jkn->...ikn", a, b)


def apply_blocks(jacobian: Tensor, sens: Tensor) -> Tensor:
    """J S per unit: jacobian [B, m, m, N], sens [B, m, S, N, E] → [B, m, S, N, E].

    One fused multiply-add per input component (m of them), no [B, m, m, S, N, E] temporary."""
    blocks = jacobian[:, :, :, None, :, None]  # [B, m(out), m(in), 1, N, 1]
    out = blocks[:, :, 0] * sens[:, None, 0]
    for k in range(1, sens.shape[1]):
        out.addcmul_(blocks[:, :, k], sens[:, None, k])
    return out


def contract(error: Tensor, sens: Tensor) -> Tensor:
    """Σ_b Σ_j error[b, j, n] sens[b, j, s, n, e]: error [B, m, N], sens [B, m, S, N, E] → [S, N, E]."""
    return torch.einsum("bjn,bjsne->sne", error, sens)


def block_suffix_products(jacobian: Tensor) -> tuple[Tensor, Tensor]:
    """A_{t+1:T} = J_T ⋯ J_{t+1} for every t ([B, T, m, m, N], I at the last step) and A_{1:T}."""
    after = torch.empty_like(jacobian)
    after[:, -1] = torch.eye(jacobian.shape[2], dtype=jacobian.dtype, device=jacobian.device)[..., None]
    for t in range(jacobian.shape[1] - 1, 0, -1):
        after[:, t - 1] = block_matmul(after[:, t], jacobian[:, t])
    return after, block_matmul(after[:, 0], jacobian[:, 0])


# ----------------------------------------------------------------------------- sensitivities
# Local derivatives in canonical layout, over time: "weight_ih" → d_pre [B, T, m, K·m, N] (the
# outer product with x_t is never formed), parameters → [B, T, m, S, N].


def carry_segment(
    jacobian: Tensor, local: dict[str, Tensor], x: Tensor, sens0: dict[str, Tensor] | None
) -> dict[str, Tensor]:
    """S_T (canonical [B, m, S, N, E]) by the segment form: suffix products + one bmm for weight_ih."""
    batch, steps = x.shape[:2]
    after, total = block_suffix_products(jacobian)
    sens = {}
    for name, d in local.items():
        gated = torch.einsum("btjkn,btksn->btjsn", after, d)  # A_{t+1:T} d_t
        if name == "weight_ih":
            flat = gated.reshape(batch, steps, -1).transpose(1, 2)  # [B, m·S·N, T]
            sens[name] = torch.bmm(flat, x).view(*gated.shape[:1], *gated.shape[2:], x.shape[-1])
        else:
            sens[name] = gated.sum(1).unsqueeze(-1)
        if sens0 is not None:
            sens[name] += apply_blocks(total, sens0[name])
    return sens


def stepwise_sensitivities(
    jacobian: Tensor, local: dict[str, Tensor], x: Tensor, sens0: dict[str, Tensor] | None
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Yield (t, S_t) (canonical) for t = 0..T-1 by the recursion S_t = J_t S_{t-1} + local_t."""
    if sens0 is None:
        sens = {
            name: d.new_zeros(*d.shape[:1], *d.shape[2:], x.shape[-1] if name == "weight_ih" else 1)
            for name, d in local.items()
        }
    else:
        sens = dict(sens0)
    for t in range(x.shape[1]):
        for name, d in local.items():
            step = d[:, t, ..., None] * (x[:, t, None, None, None, :] if name == "weight_ih" else 1)
            sens[name] = apply_blocks(jacobian[:, t], sens[name]) + step
        yield t, sens


class _BlockRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, mode, track, names, x, keep, c0, restart, weight_ih, *rest):
        params = dict(zip(names, rest[: len(names)]))
        keys = ("weight_ih", *names)
        shapes = {"weight_ih": weight_ih.shape, **{n: p.shape for n, p in params.items()}}
        sens0 = dict(zip(keys, rest[len(names) :])) or None
        batch, steps, _ = x.shape
        m, hidden = cell.block_size, cell.hidden_size
        pre = cell.pre_activations(x)
        c_seq = unroll_blocks(cell, pre, c0, keep, params, restart)
        c_prev = _previous_states(c0, c_seq, keep, restart)
        jacobian, d_pre, d_params = cell.local_derivatives(pre, c_prev, params)
        jacobian = jacobian * _mask(keep, jacobian)
        local = {"weight_ih": d_pre.reshape(batch, steps, m, -1, hidden)}
        for name, d in d_params.items():
            d = d.expand(batch, steps, m, *params[name].shape)
            local[name] = d.reshape(batch, steps, m, -1, hidden)
        if sens0 is not None:  # canonical views [B, m, S, N, E]
            sens0 = {name: s.view(batch, m, -1, hidden, s.shape[-1] if name == "weight_ih" else 1)
                     for name, s in sens0.items()}  # fmt: skip

        out = ()
        if track:
            if mode == "rtrl_stepwise":
                *_, (_, new) = stepwise_sensitivities(jacobian, local, x, sens0)
            else:
                new = carry_segment(jacobian, local, x, sens0)
            out = tuple(new[name].reshape(batch, m, *shapes[name]) for name in keys)
            ctx.mark_non_differentiable(*out)
        ctx.set_materialize_grads(False)
        ctx.mode, ctx.names, ctx.shapes = mode, names, shapes
        ctx.has_sens0 = sens0 is not None
        ctx.save_for_backward(
            x, weight_ih, jacobian, *local.values(), *(sens0.values() if sens0 is not None else ())
        )
        return (c_seq, *out)

    @staticmethod
    def backward(ctx, grad_c, *_unused):
        mode, names, shapes = ctx.mode, ctx.names, ctx.shapes
        keys = ("weight_ih", *names)
        x, weight_ih, jacobian, *saved = ctx.saved_tensors
        local = dict(zip(keys, saved[: len(keys)]))
        sens0 = dict(zip(keys, saved[len(keys) :])) if ctx.has_sens0 else None
        batch, steps, m, _, hidden = jacobian.shape
        if grad_c is None:
            grad_c = jacobian.new_zeros(batch, steps, m, hidden)

        # In-segment BPTT: δ_t = g_t + J_{t+1}ᵀ δ_{t+1}.
        delta = torch.empty_like(grad_c)
        delta[:, -1] = grad_c[:, -1]
        for t in range(steps - 2, -1, -1):
            delta[:, t] = grad_c[:, t] + torch.einsum("bkjn,bkn->bjn", jacobian[:, t + 1], delta[:, t + 1])
        grad_c0 = torch.einsum("bkjn,bkn->bjn", jacobian[:, 0], delta[:, 0])
        grad_pre = torch.einsum("btjn,btjsn->btsn", delta, local["weight_ih"]).reshape(batch, steps, -1)
        grad_x = grad_pre @ weight_ih if ctx.needs_input_grad[4] else None

        if mode == "rtrl_stepwise":
            grads = {name: 0 for name in keys}
            for t, sens in stepwise_sensitivities(jacobian, local, x, sens0):
                for name in keys:
                    grads[name] = grads[name] + contract(grad_c[:, t], sens[name])
        else:
            grads = {"weight_ih": grad_pre.reshape(batch * steps, -1).t() @ x.reshape(batch * steps, -1)}
            for name in names:
                grads[name] = torch.einsum("btjn,btjsn->sn", delta, local[name])
            if mode == "rtrl" and sens0 is not None:
                for name in keys:
                    grads[name] = grads[name] + contract(grad_c0, sens0[name]).reshape(grads[name].shape)
        grads = {name: g.reshape(shapes[name]) for name, g in grads.items()}
        return (
            None, None, None, None,  # cell, mode, track, names
            grad_x, None, grad_c0, None,  # x, keep, c0, restart
            *(grads[name] for name in keys),
            *([None] * (len(saved) - len(keys))),
        )  # fmt: skip


def block_recurrence(
    cell: BlockElementwiseCell,
    x: Tensor,
    c0: Tensor,
    keep: Tensor,
    sensitivities: dict[str, Tensor] | None = None,
    gradient: GradientMode = "rtrl",
    track_sensitivities: bool = True,
    restart: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor] | None]:
    """Run a block cell over a segment with the chosen gradient; functional form (no input checks).

    Args:
        cell: the block cell (its parameters receive the gradients).
        x: inputs, [B, T, D].
        c0: carried state, [B, m, N] (a constant for the RTRL modes).
        keep: [B, T], 0 where an episode starts (state and sensitivities reset), else 1.
        sensitivities: S_0 by parameter name, each [B, m, *param.shape]; None means zeros.
        gradient: ``"rtrl"``, ``"rtrl_stepwise"`` or ``"tbptt"``.
        track_sensitivities: compute S_T (ignored for ``"tbptt"``).
        restart: optional [B, T, m, N] constant states to restart from where ``keep`` is 0.
    Returns:
        c [B, T, m, N], and S_T by parameter name, each [B, m, *param.shape] (None when not tracked).
    """
    names = tuple(cell.recurrent_parameter_names)
    params = cell.recurrent_parameters()
    track = track_sensitivities and gradient != "tbptt"
    if not torch.is_grad_enabled() and not track:  # acting: no graph, no derivatives
        return unroll_blocks(cell, cell.pre_activations(x), c0, keep, params, restart), None
    sens0 = (
        ()
        if sensitivities is None or gradient == "tbptt"
        else tuple(sensitivities[name] for name in ("weight_ih", *names))
    )
    outputs = _BlockRecurrence.apply(
        cell, gradient, track, names, x, keep, c0, restart, cell.weight_ih, *params.values(), *sens0
    )
    if not track:
        return outputs[0], None
    return outputs[0], dict(zip(("weight_ih", *names), outputs[1:]))
