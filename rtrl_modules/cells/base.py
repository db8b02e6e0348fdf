"""The interface through which an element-wise recurrent cell gets exact RTRL.

A cell computes, for hidden units i = 1..N,

    a_t = W x_t                                   (W = ``weight_ih``: [K*N, D], K "gates")
    c_t = step(a_t, c_{t-1}; θ)                   element-wise: c_t[i] depends only on
                                                  a_t[:, i], c_{t-1}[i] and θ[..., i]
    h_t = output(x_t, c_t)                        feed-forward read-out (ordinary backprop)

Because ``step`` is element-wise, ∂c_t/∂c_{t-1} is diagonal and every RTRL sensitivity has the
shape of its parameter (times the batch): that is what makes exact RTRL cost O(N·D) per step.
The RTRL machinery (``rtrl_modules.core``) needs three per-step local derivatives, which
:meth:`ElementwiseCell.local_derivatives` computes:

    J_t       = ∂c_t/∂c_{t-1}        [..., N]
    d_pre_t   = ∂c_t/∂a_t            [..., K, N]
    d_θ_t     = ∂c_t/∂θ              [..., *θ.shape]   for each recurrent parameter θ

The default implementation gets them from one autograd call on ``step`` (valid because the
Jacobians are diagonal, so the gradient of ``c.sum()`` is the diagonal); cells may override it
with closed forms. ``rtrl_modules.core.check_rtrl_gradients`` verifies a cell against full BPTT.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CellBase(nn.Module):
    """What every cell has: sizes, the input weight ``weight_ih`` [K·m·N, D] (K = ``num_gates``,
    m = ``block_size``: 1 for scalar units) and the named recurrent parameters trained by RTRL."""

    num_gates: int = 1
    block_size: int = 1
    recurrent_parameter_names: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(
                f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        rows = self.num_gates * self.block_size * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))

    def recurrent_parameters(self) -> dict[str, Tensor]:
        """The parameters passed to :meth:`step`, by name."""
        return {name: getattr(self, name) for name in self.recurrent_parameter_names}

    def rtrl_parameters(self) -> dict[str, Tensor]:
        """Every parameter whose gradient comes from RTRL: ``weight_ih`` and the recurrent ones."""
        return {"weight_ih": self.weight_ih, **self.recurrent_parameters()}


class ElementwiseCell(CellBase):
    """Base class of element-wise recurrent cells (the math only; no time loop).

    Subclasses define:
      * ``num_gates`` (K) and the parameter ``weight_ih`` of shape [K*N, D];
      * ``recurrent_parameter_names``: names of the parameters used inside ``step`` (each of
        shape [..., N]); they and ``weight_ih`` are the parameters trained by RTRL;
      * :meth:`step`; optionally :meth:`local_derivatives` (closed form) and :meth:`output`.

    Attributes:
        input_size: D.
        hidden_size: N, the size of the recurrent state ``c``.
        output_size: size of ``output(x, c)``'s last dimension.
    """

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def step(self, pre: Tensor, c_prev: Tensor, **params: Tensor) -> Tensor:
        """One recurrence step, element-wise over the last dimension.

        Args:
            pre: input pre-activations ``W x_t``, [..., K, N].
            c_prev: previous state, [..., N] (already zeroed where an episode starts).
            params: the recurrent parameters, each broadcastable to [..., *shape].
        Returns:
            c_t, [..., N].
        """
        raise NotImplementedError

    def local_derivatives(
        self, pre: Tensor, c_prev: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(J, d_pre, d_params) at every position of ``pre`` [..., K, N] / ``c_prev`` [..., N].

        Generic version: one vector-Jacobian product of ``step`` with a vector of ones, which
        equals the diagonal of each Jacobian because ``step`` is element-wise. The recurrent
        parameters are expanded to the leading shape so each position gets its own derivative.
        """
        lead = c_prev.shape[:-1]
        with torch.enable_grad():
            pre = pre.detach().requires_grad_(True)
            c_prev = c_prev.detach().requires_grad_(True)
            expanded = {
                name: p.detach().expand(*lead, *p.shape).contiguous().requires_grad_(True)
                for name, p in params.items()
            }
            c = self.step(pre, c_prev, **expanded)
            grads = torch.autograd.grad(
                c, [c_prev, pre, *expanded.values()], torch.ones_like(c), allow_unused=True
            )
        grads = [
            torch.zeros_like(t) if g is None else g for g, t in zip(grads, [c_prev, pre, *expanded.values()])
        ]
        return grads[0], grads[1], dict(zip(expanded, grads[2:]))

    def output(self, x: Tensor, c: Tensor) -> Tensor:
        """Feed-forward read-out h_t from input x [..., D] and state c [..., N]; default h = c."""
        return c

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


#: Parameter initialisations of the cells that offer a choice (``ELSTMCell(..., init=...)``).
INIT_SCHEMES: tuple[str, ...] = ("default", "official")


def check_init(init: str) -> str:
    """Return ``init`` if it is one of :data:`INIT_SCHEMES`, else raise a one-line ``ValueError``."""
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; valid choices are {', '.join(INIT_SCHEMES)}")
    return init


def uniform_(tensor: Tensor, bound: float) -> Tensor:
    """In-place U(-bound, bound) without autograd tracking."""
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)
