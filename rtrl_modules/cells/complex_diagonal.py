"""Complex-diagonal recurrences as 2×2 blocks: the Recurrent Trace Unit and the complex LRU.

Both cells run, for every unit n, one complex number c = c_re + i·c_im (state [..., 2, N]):

    λ = r·e^{iθ},   r = exp(−exp(ν)),   θ = exp(θ_log),   γ = √(1 − r²)
    z_t = λ ⊙ c_{t-1} + γ ⊙ (W x_t)          W x_t = a_re + i·a_im  (``weight_ih`` [2N, D])
    c_t = f(z_t)                             f applied to real and imaginary parts (identity: linear)

In real 2×2 form, with g = r cos θ and φ = r sin θ, z = [[g, −φ], [φ, g]] c + γ a: a rotation-scaling
block per unit. The parameterisation (ν = ``nu_log``, θ_log = ``theta_log``) and γ are those of the
LRU (Orvieto et al., 2023, "Resurrecting Recurrent Neural Networks for Long Sequences", §3) and of the
RTU (Elelimy et al., 2024, "Real-Time Recurrent Learning using Trace Units in Reinforcement
Learning"), which are the same recurrence with different read-outs:

* :class:`RTUCell`: linear RTU h = f([c_re; c_im]) (f after the recurrence), or non-linear RTU
  c_t = f(z_t), h = [c_re; c_im] (f inside the recurrence); output 2N.
* :class:`ComplexLRUCell`: y = Re(C c) + D ⊙ x with complex C [D, N] and real D [D]; output D.

Here γ is computed from ν (as in the RTU and this package's real :class:`~rtrl_modules.cells.LRUCell`);
Orvieto et al.'s code learns γ as a separate parameter initialised to this value.

Closed-form local derivatives (per unit; f' = f'(z_t)): ∂(λc)/∂ν = −e^ν·λc, ∂(λc)/∂θ_log = θ·iλc,
∂γ/∂ν = e^ν r²/γ, so

    J = diag(f') [[g, −φ], [φ, g]],   ∂c/∂a = f' γ I,
    ∂c/∂ν = f' ⊙ (−e^ν λc + e^ν r²/γ · a),   ∂c/∂θ_log = f' ⊙ θ·iλc     (complex numbers as 2-vectors)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .block import BlockElementwiseCell

# name → (f, f' as a function of z)
ACTIVATIONS = {
    "identity": (lambda z: z, torch.ones_like),
    "relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),
    "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
}


def _check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid choices are {', '.join(ACTIVATIONS)}")
    return name


def _times_i(z: Tensor) -> Tensor:
    """i·z for complex numbers stored as [..., 2, N] (real, imaginary)."""
    return torch.stack((-z[..., 1, :], z[..., 0, :]), dim=-2)


class ComplexDiagonalCell(BlockElementwiseCell):
    """c_t = f(λ ⊙ c_{t-1} + γ ⊙ W x_t) with complex diagonal λ, as 2×2 real blocks (see module doc).

    Args:
        input_size: D. hidden_size: N complex units (2N real numbers of state).
        r_min, r_max: |λ| is initialised with |λ|² uniform on [r_min², r_max²] (the LRU's ring init).
        max_phase: arg λ is initialised uniform on (0, max_phase].
        recurrent_activation: f inside the recurrence, ``"identity"`` (linear), ``"relu"`` or ``"tanh"``.
    """

    num_gates = 1
    block_size = 2
    recurrent_parameter_names = ("nu_log", "theta_log")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        r_min: float = 0.5,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
        recurrent_activation: str = "identity",
    ) -> None:
        super().__init__(input_size, hidden_size)
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if max_phase <= 0:
            raise ValueError(f"max_phase must be positive, got {max_phase}")
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.recurrent_activation = _check_activation(recurrent_activation)
        self.nu_log = nn.Parameter(torch.empty(hidden_size))
        self.theta_log = nn.Parameter(torch.empty(hidden_size))
        ComplexDiagonalCell.reset_parameters(self)  # a subclass's read-out does not exist yet

    def reset_parameters(self) -> None:
        with torch.no_grad():
            # B = B_re + i B_im with B_re, B_im ~ N(0, 1/(2D)) (the LRU's complex Glorot-like init).
            self.weight_ih.normal_(0.0, 1.0 / math.sqrt(2 * self.input_size))
            radius_sq = torch.rand(self.hidden_size) * (self.r_max**2 - self.r_min**2) + self.r_min**2
            self.nu_log.copy_(torch.log(-0.5 * torch.log(radius_sq)))
            # θ = exp(θ_log) uniform on (0, max_phase]; 1 − U keeps log away from 0.
            self.theta_log.copy_(torch.log(self.max_phase * (1 - torch.rand(self.hidden_size))))

    @staticmethod
    def eigenvalues(nu_log: Tensor, theta_log: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(λ as [..., 2, N] (real, imaginary), γ = √(1 − |λ|²) [..., N], e^ν [..., N])."""
        nu = torch.exp(nu_log)
        radius, theta = torch.exp(-nu), torch.exp(theta_log)
        lam = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=-2)
        gamma = torch.sqrt(-torch.expm1(-2 * nu))  # √(1 − r²), accurate for r near 1
        return lam, gamma, nu

    @staticmethod
    def _complex_mul(lam: Tensor, c: Tensor) -> Tensor:
        """λ ⊙ c for complex numbers stored as [..., 2, N]."""
        re = lam[..., 0, :] * c[..., 0, :] - lam[..., 1, :] * c[..., 1, :]
        im = lam[..., 1, :] * c[..., 0, :] + lam[..., 0, :] * c[..., 1, :]
        return torch.stack((re, im), dim=-2)

    def _linear_part(self, pre: Tensor, c_prev: Tensor, nu_log: Tensor, theta_log: Tensor):
        lam, gamma, nu = self.eigenvalues(nu_log, theta_log)
        rotated = self._complex_mul(lam, c_prev)  # λ c_{t-1}
        a = pre[..., 0, :, :]
        return rotated + gamma.unsqueeze(-2) * a, rotated, a, lam, gamma, nu

    def step(self, pre: Tensor, c_prev: Tensor, nu_log: Tensor, theta_log: Tensor) -> Tensor:
        z = self._linear_part(pre, c_prev, nu_log, theta_log)[0]
        return ACTIVATIONS[self.recurrent_activation][0](z)

    def local_derivatives(
        self, pre: Tensor, c_prev: Tensor, params: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        z, rotated, a, lam, gamma, nu = self._linear_part(pre, c_prev, params["nu_log"], params["theta_log"])
        slope = ACTIVATIONS[self.recurrent_activation][1](z)  # f'(z) [..., 2, N]
        g, phi = lam[..., 0, :], lam[..., 1, :]
        block = torch.stack((torch.stack((g, -phi), -2), torch.stack((phi, g), -2)), -3)  # [.., 2, 2, N]
        jacobian = slope.unsqueeze(-2) * block
        eye = torch.eye(2, dtype=z.dtype, device=z.device)
        d_pre = (slope * gamma.unsqueeze(-2)).unsqueeze(-2) * eye.unsqueeze(-1)  # [.., 2, 2, N]
        radius_sq = (lam**2).sum(-2)  # r² = g² + φ²
        d_nu = slope * nu.unsqueeze(-2) * ((radius_sq / gamma).unsqueeze(-2) * a - rotated)
        d_theta = slope * torch.exp(params["theta_log"]).unsqueeze(-2) * _times_i(rotated)
        return jacobian, d_pre.unsqueeze(-3), {"nu_log": d_nu, "theta_log": d_theta}


class RTUCell(ComplexDiagonalCell):
    """Recurrent Trace Unit (Elelimy et al., 2024): the complex-diagonal recurrence, read out as
    [c_re; c_im] (2N features).

    ``nonlinear=False`` (linear RTU): c_t = λ c_{t-1} + γ W x_t, h_t = f([c_re; c_im]).
    ``nonlinear=True`` (non-linear RTU): c_t = f(λ c_{t-1} + γ W x_t), h_t = [c_re; c_im].
    ``activation`` f: ``"relu"`` (default), ``"tanh"`` or ``"identity"``. Other arguments: see
    :class:`ComplexDiagonalCell`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinear: bool = False,
        activation: str = "relu",
        r_min: float = 0.5,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
    ) -> None:
        _check_activation(activation)
        inner = activation if nonlinear else "identity"
        super().__init__(input_size, hidden_size, r_min, r_max, max_phase, inner)
        self.nonlinear, self.activation = bool(nonlinear), activation

    def output(self, x: Tensor, c: Tensor) -> Tensor:
        flat = c.flatten(-2)  # [c_re; c_im]
        return flat if self.nonlinear else ACTIVATIONS[self.activation][0](flat)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinear={self.nonlinear}, activation={self.activation!r}"


class ComplexLRUCell(ComplexDiagonalCell):
    """Complex diagonal LRU (Orvieto et al., 2023): the complex-diagonal linear recurrence with the
    read-out y_t = Re(C c_t) + D ⊙ x_t; C = C_re + i C_im [D, N] complex, D [D] real, output D.

    Arguments: see :class:`ComplexDiagonalCell` (the recurrence is linear here).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        r_min: float = 0.5,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__(input_size, hidden_size, r_min, r_max, max_phase)
        self.out_real = nn.Parameter(torch.empty(input_size, hidden_size))
        self.out_imag = nn.Parameter(torch.empty(input_size, hidden_size))
        self.skip = nn.Parameter(torch.empty(input_size))
        self._reset_readout()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._reset_readout()

    def _reset_readout(self) -> None:
        with torch.no_grad():
            # C_re, C_im ~ N(0, 1/(2N)); D ~ N(0, 1), as in the LRU paper's initialisation.
            self.out_real.normal_(0.0, 1.0 / math.sqrt(2 * self.hidden_size))
            self.out_imag.normal_(0.0, 1.0 / math.sqrt(2 * self.hidden_size))
            self.skip.normal_()

    @property
    def output_size(self) -> int:
        return self.input_size

    def output(self, x: Tensor, c: Tensor) -> Tensor:
        # Re((C_re + i C_im)(c_re + i c_im)) = C_re c_re − C_im c_im
        return c[..., 0, :] @ self.out_real.t() - c[..., 1, :] @ self.out_imag.t() + self.skip * x
