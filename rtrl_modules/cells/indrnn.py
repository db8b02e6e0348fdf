"""IndRNN (Li et al., CVPR 2018): independently recurrent units, c_t = tanh(W x_t + u ⊙ c_{t-1} + b).

It uses the generic autograd-based local derivatives of :class:`ElementwiseCell`, i.e. it is
written exactly as a user-defined cell would be.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import ElementwiseCell, uniform_


class IndRNNCell(ElementwiseCell):
    num_gates = 1
    recurrent_parameter_names = ("weight_hh", "bias")

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_hh = nn.Parameter(torch.empty(hidden_size))
        self.bias = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight_ih, 1.0 / math.sqrt(self.input_size))
        with torch.no_grad():
            self.weight_hh.uniform_(0.0, 1.0)  # |u| ≤ 1 keeps the recurrence stable (IndRNN §3)
            self.bias.zero_()

    def step(self, pre: Tensor, c_prev: Tensor, weight_hh: Tensor, bias: Tensor) -> Tensor:
        return torch.tanh(pre[..., 0, :] + weight_hh * c_prev + bias)
