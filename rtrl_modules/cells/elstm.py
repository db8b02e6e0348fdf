"""eLSTM: the element-wise recurrent LSTM of Irie et al. (ICLR 2024), "QuasiLSTM" in their code.

    z_t = tanh(Z x_t + w_z ⊙ c_{t-1} + b_z)
    f_t = σ(F x_t + w_f ⊙ c_{t-1} + b_f)
    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ z_t
    h_t = σ(O [x_t; c_t] + b_o) ⊙ c_t           (output gate: feed-forward, ordinary backprop)

Parameter layout: ``weight_ih`` = [Z; F] ([2N, D]), ``weight_hh`` = [w_z; w_f] ([2, N]),
``bias`` = [b_z; b_f] ([2, N]); the output gate is ``output_gate`` (Linear(D + N, N)).

Initialisation (``init``): ``"default"`` draws ``weight_ih``, ``weight_hh`` and ``bias`` from
U(±1/√N) (PyTorch's recurrent-layer convention); ``"official"`` draws them from N(0, 0.1²) as the
official code of the paper does (its ``QuasiLSTMlayer.init_weights``). Either way the output gate
keeps ``nn.Linear``'s own initialisation (as in the official code), and ``forget_bias`` is added
to b_f (official code: ``bias_f + forget_bias``, default 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import ElementwiseCell, check_init, uniform_


class ELSTMCell(ElementwiseCell):
    """eLSTM cell with closed-form local derivatives (docs/math.md §1)."""

    num_gates = 2
    recurrent_parameter_names = ("weight_hh", "bias")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_gate: bool = True,
        forget_bias: float | None = None,
        init: str = "default",
    ) -> None:
        """``forget_bias``: initial b_f (None: drawn like the other weights; with ``init="official"``
        it is added to the drawn b_f); a large b_f (e.g. 3, f ≈ 0.95) starts the cell with long
        memory, which helps on long credit spans. ``init``: ``"default"`` or ``"official"``."""
        super().__init__(input_size, hidden_size)
        self.forget_bias = forget_bias
        self.init = check_init(init)
        self.weight_hh = nn.Parameter(torch.empty(2, hidden_size))
        self.bias = nn.Parameter(torch.empty(2, hidden_size))
        self.output_gate = nn.Linear(input_size + hidden_size, hidden_size) if output_gate else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the parameters with the cell's ``init`` scheme (see the module docstring)."""
        if self.init == "official":
            with torch.no_grad():
                for p in (self.weight_ih, self.weight_hh, self.bias):
                    p.normal_(0.0, 0.1)
                if self.forget_bias is not None:
                    self.bias[1].add_(self.forget_bias)
        else:
            bound = 1.0 / math.sqrt(self.hidden_size)
            for p in (self.weight_ih, self.weight_hh, self.bias):
                uniform_(p, bound)
            if self.forget_bias is not None:
                with torch.no_grad():
                    self.bias[1].fill_(self.forget_bias)
        if self.output_gate is not None:
            self.output_gate.reset_parameters()

    def _gates(self, pre: Tensor, c_prev: Tensor, weight_hh: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(pre[..., 0, :] + weight_hh[..., 0, :] * c_prev + bias[..., 0, :])
        f = torch.sigmoid(pre[..., 1, :] + weight_hh[..., 1, :] * c_prev + bias[..., 1, :])
        return z, f

    def step(self, pre: Tensor, c_prev: Tensor, weight_hh: Tensor, bias: Tensor) -> Tensor:
        # Both gates in one multiply-add ([..., 2, N]); c = f ⊙ c_prev + (1 − f) ⊙ z as one lerp.
        # Few kernels per step: this runs once per time step inside the segment loop.
        a = torch.addcmul(bias, weight_hh, c_prev.unsqueeze(-2)).add_(pre)
        z, f = torch.tanh(a[..., 0, :]), torch.sigmoid(a[..., 1, :])
        return torch.lerp(z, c_prev, f)

    def local_derivatives(
        self, pre: Tensor, c_prev: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        weight_hh = params["weight_hh"]
        z, f = self._gates(pre, c_prev, weight_hh, params["bias"])
        z_hat = (1 - f) * (1 - z * z)  # ∂c/∂(z pre-activation)
        f_hat = (c_prev - z) * f * (1 - f)  # ∂c/∂(f pre-activation)
        # The w_z ⊙ ẑ term is missing from the paper's early printed equation; it is needed.
        jacobian = f + weight_hh[..., 1, :] * f_hat + weight_hh[..., 0, :] * z_hat
        d_pre = torch.stack((z_hat, f_hat), dim=-2)
        return jacobian, d_pre, {"weight_hh": d_pre * c_prev.unsqueeze(-2), "bias": d_pre}

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def output(self, x: Tensor, c: Tensor) -> Tensor:
        if self.output_gate is None:
            return c
        return torch.sigmoid(self.output_gate(torch.cat((x, c), dim=-1))) * c
