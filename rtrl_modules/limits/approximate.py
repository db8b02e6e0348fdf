"""Approximate RTRL for the fully recurrent tanh RNN: SnAp-n and UORO (the math; no plumbing here).

For h_t = tanh(W x_t + U h_{t-1} + b) the exact sensitivity S^θ_t = ∂h_t/∂θ is dense, [N, P]
(:func:`~rtrl_modules.limits.functional.rnn_sensitivity_step`). The approximations keep less:

* **SnAp-n** (Menick et al., "Practical real time recurrent learning with a sparse
  approximation", ICLR 2021): keep only the entries (k, θ_ij) of S that are nonzero after n steps
  of the recursion from the immediate Jacobian, i.e. those with unit k reachable from unit i in at
  most n − 1 steps through U's sparsity pattern; drop the others at every step. SnAp-1 keeps
  k = i (one number per parameter, like element-wise RTRL); SnAp-2 also keeps k with U[k, i] ≠ 0.
  For a dense U SnAp-2 keeps everything, so it is exact RTRL: it is meant for sparse U.
* **UORO** (Tallec & Ollivier, "Unbiased online recurrent optimization", ICLR 2018): S ≈ s̃ θ̃ᵀ,
  a rank-one, unbiased estimate updated with random signs ν:
  s̃ ← ρ₀ J_t s̃ + ρ₁ ν,  θ̃ ← θ̃/ρ₀ + νᵀF_t/ρ₁, with ρ₀ = √(‖θ̃‖/‖J_t s̃‖), ρ₁ = √(‖νᵀF_t‖/‖ν‖)
  (J_t = ∂h_t/∂h_{t-1}, F_t = ∂h_t/∂θ|immediate); cost O(P) per step.
* **KF-RTRL** (Mujika, Meier & Steger, "Approximating real-time recurrent learning with random
  Kronecker factors", NeurIPS 2018): with z_t = [x_t; h_{t-1}; 1] the immediate Jacobian of
  θ = [W U b] is F_t = z_tᵀ ⊗ D_t (D_t = diag(1 − h_t²)), and S ≈ uᵀ ⊗ A (S[k, (i, j)] = A[k, i] u[j]),
  u [D + N + 1], A [N, N], updated unbiasedly with two random signs c₁, c₂:
  u ← c₁ p₁ u + c₂ p₂ z_t,  A ← c₁ J_t A / p₁ + c₂ D_t / p₂ (p₁ = √(‖J_t A‖/‖u‖), p₂ = √(‖D_t‖/‖z_t‖));
  O(N²) memory and O(N³) time per step.

Compact SnAp layout: the kept units of parameter row i are ``index[i]`` ([N, r]; slot 0 is i
itself, padded slots flagged False in ``valid``), and S^θ is stored as [B, N, r, *cols] with cols
= (D,) for W, (N,) for U and () for b: entry [b, i, a, j] = ∂h[idx[i, a]]/∂θ[i, j].
"""

from __future__ import annotations

import torch
from torch import Tensor

UORO_STATE = "state_factor"  # UORO's s̃ [B, N], stored next to the per-parameter θ̃ factors
KF_INPUT, KF_STATE = "kf_input", "kf_state"  # KF-RTRL's u [B, D + N + 1] and A [B, N, N]


# ----------------------------------------------------------------------------- sparsity patterns
def recurrent_mask(hidden_size: int, density: float, seed: int = 0) -> Tensor | None:
    """Fixed random sparsity mask of U [N, N] (float 0/1): the diagonal plus a ``density`` fraction
    of the off-diagonal entries (each kept with that probability). None when ``density`` is 1."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if density == 1.0:
        return None
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(hidden_size, hidden_size, generator=gen) < density
    mask.fill_diagonal_(True)
    return mask.float()


def snap_pattern(mask: Tensor | None, hidden_size: int, order: int) -> tuple[Tensor, Tensor]:
    """Kept units of SnAp-``order``: (index [N, r] long, valid [N, r] bool), slot 0 = the row's unit.

    Unit k is kept for parameter row i iff k is reachable from i in ≤ order − 1 steps of
    (mask ∪ I) (mask[k, i] ≠ 0: i feeds k). r = the largest count over rows.
    """
    if order < 1:
        raise ValueError(f"SnAp order must be ≥ 1, got {order}")
    eye = torch.eye(hidden_size, dtype=torch.bool)
    one_step = eye if mask is None else (mask.detach().cpu() != 0) | eye
    if mask is None and order > 1:
        one_step = torch.ones_like(eye)
    reach = eye.clone()  # reach[k, i]
    for _ in range(order - 1):
        reach = (one_step.float() @ reach.float()) > 0
    k = torch.arange(hidden_size).unsqueeze(1).expand_as(reach)  # k[k, i] = k
    n = hidden_size
    score = torch.where(reach, torch.where(k == k.t(), -1, k), n + k)  # self first, kept, then dropped
    order_k = score.argsort(dim=0).t()  # [N(i), N]
    width = int(reach.sum(0).max())
    index = order_k[:, :width].contiguous()
    valid = score.t().gather(1, index) < n
    return index, valid


def gathered_weight(weight_hh: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """U restricted to each row's kept units: [N, r, r], entry [i, a, c] = U[idx[i,a], idx[i,c]]."""
    sub = weight_hh[index.unsqueeze(-1), index.unsqueeze(-2)]
    return sub * (valid.unsqueeze(-1) & valid.unsqueeze(-2)).to(sub.dtype)


def snap_shapes(hidden_size: int, input_size: int, width: int) -> dict[str, torch.Size]:
    """Per-example compact SnAp sensitivity shapes: W [N, r, D], U [N, r, N], b [N, r]."""
    n, r = hidden_size, width
    return {"weight_ih": torch.Size((n, r, input_size)), "weight_hh": torch.Size((n, r, n)),
            "bias": torch.Size((n, r))}  # fmt: skip


# ----------------------------------------------------------------------------- SnAp-n
def snap_sensitivity_step(
    sens: dict[str, Tensor], x: Tensor, h_prev: Tensor, h: Tensor, keep: Tensor, weight_sub: Tensor,
    index: Tensor,
) -> dict[str, Tensor]:  # fmt: skip
    """One SnAp step: S_t = P ⊙ [diag(1 − h_t²)(U · keep_t S_{t-1} + ∂a_t/∂θ|immediate)] (P: kept).

    Args:
        sens: compact sensitivities (module docstring), "weight_ih" [B, N, r, D],
            "weight_hh" [B, N, r, N], "bias" [B, N, r].
        x [B, D]; h_prev [B, N] (zero where an episode starts); h [B, N]; keep [B];
        weight_sub [N, r, r] (:func:`gathered_weight`); index [N, r].
    Returns:
        the new sensitivities, same shapes; cost B·N·r²·(D + N + 1) multiply-adds.
    """
    batch = h.shape[0]
    gain = (1 - h * h)[:, index].unsqueeze(-1)  # [B, N, r, 1]
    immediate = {"weight_ih": x, "weight_hh": h_prev, "bias": None}
    out = {}
    for name, s in sens.items():
        flat = s.reshape(*s.shape[:3], -1)  # [B, N, r, C]
        new = torch.matmul(weight_sub, flat) * keep.view(-1, 1, 1, 1)
        new[:, :, 0] += 1 if immediate[name] is None else immediate[name].view(batch, 1, -1)
        out[name] = (new * gain).view_as(s)
    return out


def contract_snap(grad_h0: Tensor, sens: Tensor, index: Tensor) -> Tensor:
    """Σ_b Σ_a g[b, idx[i, a]] S[b, i, a, ...]: grad_h0 [B, N], sens [B, N, r, *cols] → [N, *cols]."""
    flat = sens.reshape(*sens.shape[:3], -1)
    out = torch.einsum("bia,biac->ic", grad_h0[:, index], flat)
    return out.view(sens.shape[1], *sens.shape[3:])


# ----------------------------------------------------------------------------- UORO
def uoro_shapes(hidden_size: int, param_shapes: dict[str, torch.Size]) -> dict[str, torch.Size]:
    """Per-example UORO factor shapes: s̃ [N] (key :data:`UORO_STATE`) and θ̃ [*param.shape] each."""
    return {UORO_STATE: torch.Size((hidden_size,)), **param_shapes}


def uoro_step(
    factors: dict[str, Tensor], x: Tensor, h_prev: Tensor, h: Tensor, keep: Tensor, weight_hh: Tensor,
    noise: Tensor, eps: float = 1e-7,
) -> dict[str, Tensor]:  # fmt: skip
    """One UORO step (Tallec & Ollivier 2018, Alg. 1), per example, with episode resets.

    Args:
        factors: s̃ (:data:`UORO_STATE`) [B, N]; θ̃ "weight_ih" [B, N, D], "weight_hh" [B, N, N],
            "bias" [B, N].
        x [B, D]; h_prev [B, N] (zero where an episode starts); h [B, N]; keep [B] (0 drops the
        estimate: a new episode starts from S = 0); weight_hh U [N, N]; noise ν [B, N] (random signs).
    Returns:
        the new factors, with E[s̃_t θ̃_tᵀ] = S_t given E[s̃_{t-1} θ̃_{t-1}ᵀ] = S_{t-1}.
    """
    gain = 1 - h * h
    forward = gain * ((factors[UORO_STATE] * keep.unsqueeze(-1)) @ weight_hh.t())  # J_t s̃
    gnu = gain * noise  # νᵀ diag(1 − h²)
    immediate = {"weight_ih": gnu.unsqueeze(-1) * x.unsqueeze(1),
                 "weight_hh": gnu.unsqueeze(-1) * h_prev.unsqueeze(1), "bias": gnu}  # fmt: skip
    theta = {n: factors[n] * keep.view(-1, *[1] * (factors[n].dim() - 1)) for n in immediate}
    return uoro_combine(forward, theta, noise, immediate, eps)


def uoro_combine(
    forward: Tensor, theta: dict[str, Tensor], noise: Tensor, immediate: dict[str, Tensor], eps: float = 1e-7
) -> dict[str, Tensor]:
    """UORO's variance-minimising rank-one combination, for any linear recursion S_t = J_t S_{t-1} + F_t.

    Args:
        forward: J_t s̃_{t-1} [B, N]; theta: θ̃_{t-1} per parameter [B, ...] (zeroed where an episode
        starts); noise: ν [B, N] (random signs); immediate: νᵀF_t per parameter [B, ...], same keys.
    Returns:
        {:data:`UORO_STATE`: s̃_t = ρ₀ J_t s̃ + ρ₁ ν, name: θ̃_t = θ̃/ρ₀ + νᵀF_t/ρ₁}, ρ₀ = √(‖θ̃‖/‖J_t s̃‖),
        ρ₁ = √(‖νᵀF_t‖/‖ν‖) per example (norms over all parameters together).
    """

    def norm(tensors: dict[str, Tensor]) -> Tensor:
        return sum(t.reshape(t.shape[0], -1).square().sum(1) for t in tensors.values()).sqrt()

    rho0 = ((norm(theta) + eps) / (forward.norm(dim=1) + eps)).sqrt()
    rho1 = ((norm(immediate) + eps) / (noise.norm(dim=1) + eps)).sqrt()
    out = {UORO_STATE: rho0.unsqueeze(-1) * forward + rho1.unsqueeze(-1) * noise}
    for n in immediate:
        view = (-1, *[1] * (theta[n].dim() - 1))
        out[n] = theta[n] / rho0.view(view) + immediate[n] / rho1.view(view)
    return out


def contract_uoro(grad_h0: Tensor, factors: dict[str, Tensor], name: str) -> Tensor:
    """Σ_b (g_b · s̃_b) θ̃_b for parameter ``name``: grad_h0 [B, N] → [*param.shape]."""
    coef = (grad_h0 * factors[UORO_STATE]).sum(-1)  # [B]
    return torch.tensordot(coef, factors[name], dims=([0], [0]))


# ----------------------------------------------------------------------------- KF-RTRL
def kf_shapes(hidden_size: int, input_size: int) -> dict[str, torch.Size]:
    """Per-example KF-RTRL factor shapes: u [D + N + 1] (:data:`KF_INPUT`), A [N, N] (:data:`KF_STATE`)."""
    return {KF_INPUT: torch.Size((input_size + hidden_size + 1,)),
            KF_STATE: torch.Size((hidden_size, hidden_size))}  # fmt: skip


def kf_rtrl_step(
    factors: dict[str, Tensor], x: Tensor, h_prev: Tensor, h: Tensor, keep: Tensor, weight_hh: Tensor,
    signs: Tensor, eps: float = 1e-7,
) -> dict[str, Tensor]:  # fmt: skip
    """One KF-RTRL step (Mujika et al. 2018, Alg. 1), per example, with episode resets.

    Args:
        factors: u [B, D + N + 1], A [B, N, N]; x [B, D]; h_prev [B, N] (zero where an episode
        starts); h [B, N]; keep [B] (0 restarts from S = 0); weight_hh U [N, N]; signs [B, 2] (±1).
    Returns:
        the new factors, with E[u_t ⊗ A_t] = J_t S_{t-1} + F_t given S_{t-1} = u ⊗ A.
    """
    gain = 1 - h * h
    u = factors[KF_INPUT] * keep.unsqueeze(-1)
    carried = gain.unsqueeze(-1) * torch.matmul(weight_hh, factors[KF_STATE])  # J_t A  [B, N, N]
    z = torch.cat((x, h_prev, torch.ones_like(h[:, :1])), dim=-1)
    p1 = ((carried.flatten(1).norm(dim=1) + eps) / (u.norm(dim=1) + eps)).sqrt()
    p2 = ((gain.norm(dim=1) + eps) / (z.norm(dim=1) + eps)).sqrt()
    c1, c2 = signs[:, 0], signs[:, 1]
    new_u = (c1 * p1).unsqueeze(-1) * u + (c2 * p2).unsqueeze(-1) * z
    new_a = (c1 / p1).view(-1, 1, 1) * carried + torch.diag_embed((c2 / p2).unsqueeze(-1) * gain)
    return {KF_INPUT: new_u, KF_STATE: new_a}


def contract_kf(grad_h0: Tensor, factors: dict[str, Tensor]) -> Tensor:
    """Σ_b Σ_k g[b, k] A[b, k, i] u[b, j]: grad_h0 [B, N] → the gradient of [W U b], [N, D + N + 1]."""
    row = torch.einsum("bk,bki->bi", grad_h0, factors[KF_STATE])
    return row.t() @ factors[KF_INPUT]


def random_signs(batch: int, hidden: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """ν [B, N] of independent ±1 (UORO's noise), in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, (batch, hidden), generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


__all__ = [
    "UORO_STATE",
    "recurrent_mask",
    "snap_pattern",
    "gathered_weight",
    "snap_shapes",
    "snap_sensitivity_step",
    "contract_snap",
    "uoro_shapes",
    "uoro_step",
    "uoro_combine",
    "contract_uoro",
    "KF_INPUT",
    "KF_STATE",
    "kf_shapes",
    "kf_rtrl_step",
    "contract_kf",
    "random_signs",
]
