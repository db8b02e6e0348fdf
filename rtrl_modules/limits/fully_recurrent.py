"""Exact RTRL for a fully recurrent tanh RNN: the O(N³)-memory, O(N⁴)-time reference (paper §5).

    h_t = tanh(W x_t + U h_{t-1} + b)          W [N, D], U [N, N], b [N]

Same interface as :class:`rtrl_modules.RTRLCore` (both are
:class:`~rtrl_modules.core.base.RecurrentCoreBase`):

    core = FullyRecurrentRNN(input_size=4, hidden_size=16)
    state = core.initial_state(B)            # "c" [B, N]; ("sensitivity", name) [B, N, *param.shape]
    out, state = core(x, state, is_init=is_init, gradient="rtrl")   # out = h [B, T, N]
    loss(out).backward()                     # exact RTRL gradients, untruncated across calls

Gradient: segment form. The segment is unrolled with plain autograd from the carried state c_0
(in-segment BPTT), and :func:`~rtrl_modules.limits.functional.inject_sensitivities` adds
Σ_b (∂L/∂c_0) · S_0 on backward. S_T is carried on by the dense recursion
(:func:`~rtrl_modules.limits.functional.rnn_sensitivity_step`), run without autograd.
Unlike the element-wise core, the sensitivity of a parameter is not its shape: it is dense,
[B, N, *param.shape], because every unit reaches every other through U.

Approximate RTRL (:mod:`~rtrl_modules.limits.approximate`), same segment form, with an
approximate S carried across segments (inside a segment the gradient is still exact BPTT):
``"snap1"`` / ``"snap2"`` (SnAp-n, Menick et al. 2021; compact [B, N, r, *cols] sensitivities) and
``"uoro"`` (Tallec & Ollivier 2018; rank-one factors s̃ [B, N], θ̃ [B, *param.shape]) and ``"kfrtrl"``
(Mujika et al. 2018; Kronecker factors u [B, D + N + 1], A [B, N, N]). ``density``
< 1 makes U sparse (a fixed random mask, diagonal kept), which is where SnAp-2 differs from RTRL.
The state's sensitivity entries follow the mode: ``initial_state(B, gradient=mode)``.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.base import SENSITIVITY_KEY, STATE_KEY, RecurrentCoreBase
from . import approximate as approx
from .functional import contract_dense, inject_sensitivities, rnn_sensitivity_step

EXACT_MODES: tuple[str, ...] = ("rtrl", "tbptt")
APPROXIMATE_MODES: tuple[str, ...] = ("snap1", "snap2", "uoro", "kfrtrl")
GRADIENT_MODES: tuple[str, ...] = EXACT_MODES + APPROXIMATE_MODES
SNAP_ORDER = {"snap1": 1, "snap2": 2}


class FullyRecurrentRNN(RecurrentCoreBase):
    """Vanilla tanh RNN with exact (dense) or approximate RTRL.

    Args:
        input_size: D. hidden_size: N.
        gradient: default mode: ``"rtrl"`` (exact), ``"tbptt"``, ``"snap1"``, ``"snap2"``, ``"uoro"``,
            ``"kfrtrl"``.
        density: fraction of U's off-diagonal entries that exist (fixed random mask; the diagonal
            is always kept); 1 = dense.
        mask_seed: seed of that mask.
    """

    gradient_modes = GRADIENT_MODES
    parameter_names: tuple[str, ...] = ("weight_ih", "weight_hh", "bias")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        gradient: str = "rtrl",
        density: float = 1.0,
        mask_seed: int = 0,
    ) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.output_size = hidden_size
        self.gradient = self.check_gradient(gradient)
        self.density = float(density)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        mask = approx.recurrent_mask(hidden_size, self.density, mask_seed)
        self.register_buffer("recurrent_mask", mask)
        if mask is not None:
            with torch.no_grad():
                self.weight_hh.mul_(mask)
        self._patterns: dict[int, tuple[Tensor, Tensor]] = {}

    def recurrent_weight(self) -> Tensor:
        """U as used by the recurrence: ``weight_hh`` times the sparsity mask (if any), [N, N]."""
        return self.weight_hh if self.recurrent_mask is None else self.weight_hh * self.recurrent_mask

    def snap_pattern(self, order: int) -> tuple[Tensor, Tensor]:
        """(index [N, r], valid [N, r]) of SnAp-``order`` for this U's sparsity (cached)."""
        if order not in self._patterns:
            self._patterns[order] = approx.snap_pattern(self.recurrent_mask, self.hidden_size, order)
        index, valid = self._patterns[order]
        device = self.weight_hh.device
        return index.to(device), valid.to(device)

    def sensitivity_shapes(self, gradient: str | None = None) -> dict[str, torch.Size]:
        """Per-example sensitivity shape of each parameter (and UORO's s̃) in ``gradient`` mode.

        Exact (``"rtrl"``, ``"tbptt"``): dense [N, *param.shape], B·N·(N·D + N² + N) numbers in all.
        SnAp-n: compact [N, r, *cols] (module docstring of :mod:`~rtrl_modules.limits.approximate`).
        UORO: s̃ [N] and θ̃ [*param.shape]. KF-RTRL: u [D + N + 1] and A [N, N].
        """
        gradient = self.check_gradient(gradient)
        params = {name: getattr(self, name).shape for name in self.parameter_names}
        if gradient in SNAP_ORDER:
            width = self.snap_pattern(SNAP_ORDER[gradient])[0].shape[1]
            return approx.snap_shapes(self.hidden_size, self.input_size, width)
        if gradient == "uoro":
            return approx.uoro_shapes(self.hidden_size, params)
        if gradient == "kfrtrl":
            return approx.kf_shapes(self.hidden_size, self.input_size)
        return {name: torch.Size((self.hidden_size, *shape)) for name, shape in params.items()}

    def _reference_parameter(self) -> Tensor:
        return self.weight_hh

    def step(self, x_t: Tensor, h_prev: Tensor) -> Tensor:
        """h_t [B, N] from x_t [B, D] and h_{t-1} [B, N] (already zero at an episode start)."""
        return torch.tanh(x_t @ self.weight_ih.t() + h_prev @ self.recurrent_weight().t() + self.bias)

    def _pullback(self, gradient: str, sens: dict[str, Tensor]):
        """grad_h0 [B, N] → the carried part of each parameter's gradient, Σ_b (∂L/∂h_0) · S_0."""
        index = self.snap_pattern(SNAP_ORDER[gradient])[0] if gradient in SNAP_ORDER else None
        mask = self.recurrent_mask

        def pullback(g: Tensor) -> list[Tensor]:
            if gradient == "kfrtrl":  # one Kronecker factor for [W U b]: split its columns
                grads = approx.contract_kf(g, sens).split((self.input_size, self.hidden_size, 1), dim=1)
                return [grads[0], grads[1] if mask is None else grads[1] * mask, grads[2].squeeze(1)]
            grads = []
            for name in self.parameter_names:
                if gradient == "rtrl":
                    grad = contract_dense(g, sens[name])
                elif index is not None:
                    grad = approx.contract_snap(g, sens[name], index)
                else:
                    grad = approx.contract_uoro(g, sens, name)
                grads.append(grad * mask if name == "weight_hh" and mask is not None else grad)
            return grads

        return pullback

    def _carry(
        self, gradient: str, sens: dict[str, Tensor], x: Tensor, h0: Tensor, out: Tensor, keep: Tensor
    ) -> dict[str, Tensor]:
        """The sensitivities (exact or approximate) after the segment, by the step recursion."""
        weight = self.recurrent_weight().detach()
        if gradient in SNAP_ORDER:
            index, valid = self.snap_pattern(SNAP_ORDER[gradient])
            weight_sub = approx.gathered_weight(weight, index, valid)
        h_prev = h0
        for t in range(x.shape[1]):
            h_t, inp, k = out[:, t], x[:, t], keep[:, t]
            if gradient == "rtrl":
                sens = rnn_sensitivity_step(sens, inp, h_prev * k[:, None], h_t, k, weight)
            elif gradient in SNAP_ORDER:
                sens = approx.snap_sensitivity_step(sens, inp, h_prev * k[:, None], h_t, k, weight_sub, index)
            elif gradient == "kfrtrl":
                signs = approx.random_signs(h_t.shape[0], 2, like=h_t)
                sens = approx.kf_rtrl_step(sens, inp, h_prev * k[:, None], h_t, k, weight, signs)
            else:
                noise = approx.random_signs(*h_t.shape, like=h_t)
                sens = approx.uoro_step(sens, inp, h_prev * k[:, None], h_t, k, weight, noise)
            h_prev = h_t
        return sens

    def forward(
        self,
        x: Tensor,
        state: TensorDict | None = None,
        is_init: Tensor | None = None,
        gradient: str | None = None,
    ) -> tuple[Tensor, TensorDict]:
        """x [B, T, D] → (h [B, T, N], detached new state). See the module docstring."""
        gradient, x, keep = self._prologue(x, is_init, gradient)
        batch, steps, _ = x.shape
        track = gradient != "tbptt" and torch.is_grad_enabled()
        params = [getattr(self, name) for name in self.parameter_names]

        h0 = self._read_state(state, batch, x)[STATE_KEY]
        entries = self.sensitivity_keys(gradient)
        carried = self._read_sensitivities(state, batch, x, keep, gradient, entries) if track else None
        sens0 = None if carried is None else {key[-1]: s for key, s in carried.items()}
        if sens0 is not None:
            h0 = inject_sensitivities(h0, params, self._pullback(gradient, sens0))

        h, hs = h0, []
        for t in range(steps):
            h = self.step(x[:, t], h * keep[:, t, None])
            hs.append(h)
        out = torch.stack(hs, dim=1)

        new_state = TensorDict({STATE_KEY: h.detach()}, batch_size=[batch])
        if track:
            with torch.no_grad():
                if sens0 is None:
                    sens0 = {key[-1]: x.new_zeros(batch, *shape) for key, shape in entries.items()}
                sens = self._carry(gradient, sens0, x.detach(), h0.detach(), out.detach(), keep)
            new_state[SENSITIVITY_KEY] = TensorDict(sens, batch_size=[batch])
        return out, new_state

    def extra_repr(self) -> str:
        extra = "" if self.recurrent_mask is None else f", density={self.density}"
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, gradient={self.gradient!r}{extra}"
        )
