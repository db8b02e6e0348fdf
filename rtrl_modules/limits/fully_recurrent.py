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
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.base import SENSITIVITY_KEY, STATE_KEY, RecurrentCoreBase
from .functional import contract_dense, inject_sensitivities, rnn_sensitivity_step

GRADIENT_MODES: tuple[str, ...] = ("rtrl", "tbptt")


class FullyRecurrentRNN(RecurrentCoreBase):
    """Vanilla tanh RNN with exact (dense) RTRL; ``gradient`` is ``"rtrl"`` or ``"tbptt"``."""

    gradient_modes = GRADIENT_MODES
    parameter_names: tuple[str, ...] = ("weight_ih", "weight_hh", "bias")

    def __init__(self, input_size: int, hidden_size: int, gradient: str = "rtrl") -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.output_size = hidden_size
        self.gradient = self.check_gradient(gradient)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def sensitivity_shapes(self) -> dict[str, torch.Size]:
        """Per-example sensitivity shape of each parameter: [N, *param.shape] (dense).

        The zero state of :meth:`initial_state` holds B·N·(N·D + N² + N) such numbers.
        """
        return {
            name: torch.Size((self.hidden_size, *getattr(self, name).shape)) for name in self.parameter_names
        }

    def _reference_parameter(self) -> Tensor:
        return self.weight_hh

    def step(self, x_t: Tensor, h_prev: Tensor) -> Tensor:
        """h_t [B, N] from x_t [B, D] and h_{t-1} [B, N] (already zero at an episode start)."""
        return torch.tanh(x_t @ self.weight_ih.t() + h_prev @ self.weight_hh.t() + self.bias)

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
        track = gradient == "rtrl" and torch.is_grad_enabled()
        params = [getattr(self, name) for name in self.parameter_names]

        h0 = self._read_state(state, batch, x)[STATE_KEY]
        carried = self._read_sensitivities(state, batch, x, keep, gradient) if track else None
        sens0 = None if carried is None else {key[-1]: s for key, s in carried.items()}
        if sens0 is not None:
            h0 = inject_sensitivities(h0, params, lambda g: [contract_dense(g, sens0[n]) for n in sens0])

        h, hs = h0, []
        for t in range(steps):
            h = self.step(x[:, t], h * keep[:, t, None])
            hs.append(h)
        out = torch.stack(hs, dim=1)

        new_state = TensorDict({STATE_KEY: h.detach()}, batch_size=[batch])
        if track:
            with torch.no_grad():
                sens = sens0 if sens0 is not None else self.initial_state(batch)[SENSITIVITY_KEY].to_dict()
                h_prev = h0.detach()
                for t in range(steps):
                    h_t = out[:, t].detach()
                    sens = rnn_sensitivity_step(
                        sens, x[:, t].detach(), h_prev * keep[:, t, None], h_t, keep[:, t], self.weight_hh
                    )
                    h_prev = h_t
            new_state[SENSITIVITY_KEY] = TensorDict(sens, batch_size=[batch])
        return out, new_state

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}, gradient={self.gradient!r}"
