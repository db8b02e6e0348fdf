"""SRU-style cell (Lei et al., EMNLP 2018) with its element-wise recurrent forget gate:

    f_t = σ(W_f x_t + v ⊙ c_{t-1} + b)
    c_t = f_t ⊙ c_{t-1} + (1 − f_t) ⊙ (W x_t)

The highway read-out of the original is left to the layers after the core (h = c here).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import ElementwiseCell, uniform_


class SRUCell(ElementwiseCell):
    num_gates = 2  # rows of weight_ih: [W; W_f]
    recurrent_parameter_names = ("weight_hh", "bias")

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_hh = nn.Parameter(torch.empty(hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.input_size)
        uniform_(self.weight_ih, bound)
        uniform_(self.weight_hh, bound)
        with torch.no_grad():
            self.bias.zero_()

    def step(self, pre: Tensor, c_prev: Tensor, weight_hh: Tensor, bias: Tensor) -> Tensor:
        f = torch.sigmoid(pre[..., 1, :] + weight_hh * c_prev + bias)
        return f * c_prev + (1 - f) * pre[..., 0, :]
