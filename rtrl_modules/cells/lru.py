"""A real diagonal linear recurrent unit, after the LRU of Orvieto et al. (ICML 2023), real-valued:

    λ = exp(−exp(ν)) ∈ (0, 1),   γ = sqrt(1 − λ²)
    c_t = λ ⊙ c_{t-1} + γ ⊙ (B x_t + b)

The exponential parameterisation keeps |λ| < 1; γ normalises the state's scale. The read-out is
the identity (add a nonlinearity after the core).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import ElementwiseCell, uniform_


class LRUCell(ElementwiseCell):
    num_gates = 1
    recurrent_parameter_names = ("nu_log", "bias")

    def __init__(self, input_size: int, hidden_size: int, r_min: float = 0.5, r_max: float = 0.99) -> None:
        super().__init__(input_size, hidden_size)
        if not 0.0 < r_min < r_max < 1.0:
            raise ValueError(f"need 0 < r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        self.r_min, self.r_max = r_min, r_max
        self.nu_log = nn.Parameter(torch.empty(hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight_ih, 1.0 / math.sqrt(self.input_size))
        with torch.no_grad():
            # |λ| uniform on [r_min, r_max], as in the LRU paper's ring initialisation.
            u = torch.rand(self.hidden_size)
            radius_sq = u * (self.r_max**2 - self.r_min**2) + self.r_min**2
            self.nu_log.copy_(torch.log(-0.5 * torch.log(radius_sq)))
            self.bias.zero_()

    def step(self, pre: Tensor, c_prev: Tensor, nu_log: Tensor, bias: Tensor) -> Tensor:
        decay = torch.exp(-torch.exp(nu_log))
        gamma = torch.sqrt(1 - decay * decay)
        return decay * c_prev + gamma * (pre[..., 0, :] + bias)

    def local_derivatives(
        self, pre: Tensor, c_prev: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        nu = torch.exp(params["nu_log"])
        decay = torch.exp(-nu)
        gamma = torch.sqrt(1 - decay * decay)
        u = pre[..., 0, :] + params["bias"]
        d_decay = -nu * decay  # dλ/d(nu_log)
        d_gamma = -decay * d_decay / gamma
        jacobian = decay.expand_as(c_prev)
        d_in = gamma.expand_as(c_prev)
        return jacobian, d_in.unsqueeze(-2), {"nu_log": d_decay * c_prev + d_gamma * u, "bias": d_in}
