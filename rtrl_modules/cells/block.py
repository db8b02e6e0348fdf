"""The interface through which a block-diagonal element-wise cell gets exact RTRL.

The scalar interface (:mod:`rtrl_modules.cells.base`) gives every unit one real number of state.
Here every unit i = 1..N holds a small vector of ``block_size`` (m) real numbers, e.g. m = 2 for
one complex number (real part, imaginary part), and the recurrence mixes the numbers of a unit but
never two units:

    a_t = W x_t                                   (W = ``weight_ih``: [K*m*N, D], rows ordered
                                                   (gate k, component i, unit n))
    c_t = step(a_t, c_{t-1}; θ)                   c_t[:, n] depends only on a_t[:, :, n],
                                                  c_{t-1}[:, n] and θ[..., n]
    h_t = output(x_t, c_t)                        feed-forward read-out (ordinary backprop)

State layout: c [..., m, N] (component first, unit last, so a unit's per-parameter vectors keep the
shape of the scalar cells'). ∂c_t/∂c_{t-1} is block-diagonal with N blocks of m × m, and the RTRL
sensitivity of every parameter is m times the parameter's shape: exact RTRL stays O(m²·N·D) per step
(docs/math.md §6). The RTRL machinery (:mod:`rtrl_modules.core.block_functional`) needs

    J_t       = ∂c_t/∂c_{t-1}    [..., m, m, N]      J[j, j', n] = ∂c_t[j, n] / ∂c_{t-1}[j', n]
    d_pre_t   = ∂c_t/∂a_t        [..., m, K, m, N]   d_pre[j, k, i, n] = ∂c_t[j, n] / ∂a_t[k, i, n]
    d_θ_t     = ∂c_t/∂θ          [..., m, *θ.shape]  d_θ[j, ..., n] = ∂c_t[j, n] / ∂θ[..., n]

:meth:`BlockElementwiseCell.local_derivatives` gets them generically with m autograd calls on
``step`` (one per output component: unit-wise independence makes each call give a whole row of every
block); cells may override it with closed forms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import CellBase


class BlockElementwiseCell(CellBase):
    """Base class of block-diagonal element-wise cells (the math only; no time loop).

    Subclasses define ``num_gates`` (K), ``block_size`` (m), ``recurrent_parameter_names`` (each
    parameter of shape [..., N], used inside ``step``), :meth:`step`, and optionally
    :meth:`local_derivatives` (closed form) and :meth:`output`. The base creates ``weight_ih``
    [K*m*N, D].

    Attributes:
        input_size: D.
        hidden_size: N, the number of units (blocks); the state has m·N real numbers.
        output_size: size of ``output(x, c)``'s last dimension.
    """

    block_size: int = 2

    @property
    def state_shape(self) -> torch.Size:
        """Per-example shape of the state c: [m, N]."""
        return torch.Size((self.block_size, self.hidden_size))

    @property
    def output_size(self) -> int:
        return self.block_size * self.hidden_size

    def pre_activations(self, x: Tensor) -> Tensor:
        """a = W x: x [..., D] → [..., K, m, N]."""
        return (x @ self.weight_ih.t()).unflatten(-1, (self.num_gates, *self.state_shape))

    def step(self, pre: Tensor, c_prev: Tensor, **params: Tensor) -> Tensor:
        """One recurrence step, unit by unit.

        Args:
            pre: input pre-activations ``W x_t``, [..., K, m, N].
            c_prev: previous state, [..., m, N] (already reset where an episode starts).
            params: the recurrent parameters, each broadcastable to [..., *shape].
        Returns:
            c_t, [..., m, N].
        """
        raise NotImplementedError

    def local_derivatives(
        self, pre: Tensor, c_prev: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(J [..., m, m, N], d_pre [..., m, K, m, N], d_params [..., m, *shape]) at every position.

        Generic version: for each output component j, one vector-Jacobian product of ``step`` with
        the indicator of component j; because units are independent, it is row j of every block.
        """
        lead = c_prev.shape[:-2]
        with torch.enable_grad():
            pre = pre.detach().requires_grad_(True)
            c_prev = c_prev.detach().requires_grad_(True)
            expanded = {
                name: p.detach().expand(*lead, *p.shape).contiguous().requires_grad_(True)
                for name, p in params.items()
            }
            inputs = [c_prev, pre, *expanded.values()]
            c = self.step(pre, c_prev, **expanded)
            rows = []
            for j in range(self.block_size):
                select = torch.zeros_like(c)
                select[..., j, :] = 1
                grads = torch.autograd.grad(c, inputs, select, retain_graph=True, allow_unused=True)
                rows.append([torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)])
        # Stack the rows j at the component axis each output has: [..., m, <input's shape>].
        stacked = [torch.stack(column, dim=len(lead)) for column in zip(*rows)]
        return stacked[0], stacked[1], dict(zip(expanded, stacked[2:]))

    def output(self, x: Tensor, c: Tensor) -> Tensor:
        """Feed-forward read-out from x [..., D] and c [..., m, N]; default: c flattened, [..., m·N]."""
        return c.flatten(-2)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}, block_size={self.block_size}"
