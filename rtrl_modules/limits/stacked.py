"""A stack of eLSTM layers with exact multi-layer RTRL, or approximations (layer-wise RTRL, UORO).

Layer l (0-based) maps h_{l-1} (h_{-1} = x) to c_l and h_l = σ(O_l [h_{l-1}; c_l] + b_o) ⊙ c_l.
The stack's state depends on every lower layer's parameters, so exact RTRL needs, per layer l,

* the element-wise block ∂c_l/∂θ_l (the core's compact sensitivities, [B, *param.shape]) and
* one dense cross-layer block ∂c_l/∂θ_m [B, N_l, P_m] per lower layer m < l, where θ_m is the
  layer's recurrent parameters plus its output gate (which feeds layer m+1 through time),

L(L+1)/2 blocks in all (paper §5). With N_l = N and D ≈ N a cross block is N³ numbers and its
update costs N⁴ per step, like a fully recurrent RNN.

    stack = StackedELSTM(input_size=4, hidden_sizes=[8, 8])
    state = stack.initial_state(B)            # ("layer{l}", "c"), ("layer{l}", "sensitivity", name),
                                              # ("layer{l}", "cross", "layer{m}")  for m < l
    out, state = stack(x, state, is_init=is_init, gradient="rtrl")      # out = h_{L-1} [B, T, N]
    loss(out).backward()

Gradient modes:

* ``"rtrl"``: exact. The segment is unrolled with plain autograd (in-segment BPTT through the
  whole stack) and every carried block is injected on backward by
  :func:`~rtrl_modules.limits.functional.inject_sensitivities`; blocks are carried by the
  step-by-step recursion (no autograd). Equals full BPTT.
* ``"rtrl_layerwise"``: layer-wise RTRL, the practical approximation. Each layer is an ordinary
  :class:`rtrl_modules.ELSTM` core trained by RTRL on its own parameters (O(N·D) per layer);
  lower layers get their error through the layers above by BPTT inside the segment only. The
  cross-layer temporal terms carried across segments are dropped, so with one-step segments
  (fully online learning) every cross-layer temporal term is dropped. ``lower_gradient="tbptt"``
  truncates the lower layers' gradients at the segment instead (no sensitivities for them).
* ``"rtrl_uoro"``: exact own-layer blocks, UORO cross-layer blocks (Tallec & Ollivier 2018). Each
  cross block obeys the linear recursion ∂c_l/∂θ_m ← diag(J_l) ∂c_l/∂θ_m + F_t (J_l: layer l's
  element-wise Jacobian ∂c_{l,t}/∂c_{l,t-1}; F_t = ∂c_l/∂h_{l-1} ∂h_{l-1}/∂θ_m, this step's path
  through the layers between) and is replaced by an unbiased rank-one estimate s̃ θ̃ᵀ, s̃ [B, N_l],
  θ̃ [B, P_m], updated with fresh random signs ν ∈ {±1}^{N_l} per block and step
  (:func:`~rtrl_modules.limits.approximate.uoro_combine`). νᵀF_t is a vector-Jacobian product down
  the stack (no dense block is formed), so the carried state is N_l + P_m numbers per block instead
  of N_l·P_m, and a step costs O((l − m)·N² + P_m) per block (not timed). State keys
  ("layer{l}", "cross_uoro", "layer{m}", "state_factor" | "param_factor"); build them with
  ``initial_state(B, gradient="rtrl_uoro")``. In-segment gradients are exact BPTT as in ``"rtrl"``.
* ``"tbptt"``: every layer truncated at the segment.

No SnAp mode: SnAp-1 keeps the entries of a sensitivity that are nonzero after one step from zero.
For a cross block that is every entry: θ_m reaches every unit of h_{l-1} (through O_m and layer
m's units) and ∂c_l/∂h_{l-1} = Σ_k diag(·) W_{l,k} is dense, so one step already fills ∂c_l/∂θ_m
and SnAp-1 (and every SnAp-n) of the stack is exact RTRL, at exact RTRL's cost. A sparser pattern
(e.g. keeping only unit pairs with equal index) would be a new heuristic without the papers'
justification; it is not built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict
from tensordict.utils import NestedKey
from torch import Tensor, nn

from ..core import ELSTM
from ..core.base import SENSITIVITY_KEY, STATE_KEY, RecurrentCoreBase
from ..core.checks import check_gradient_mode
from . import approximate as approx
from .functional import (
    compact_to_dense,
    contract_compact,
    contract_dense,
    diagonal_to_dense,
    inject_sensitivities,
    output_gate_derivatives,
    unit_index,
)

GRADIENT_MODES: tuple[str, ...] = ("rtrl", "rtrl_layerwise", "rtrl_uoro", "tbptt")
CROSS_MODES: tuple[str, ...] = ("rtrl", "rtrl_uoro")  # modes that carry cross-layer blocks
LOWER_GRADIENT_MODES: tuple[str, ...] = ("rtrl", "tbptt")
CROSS_KEY = "cross"
UORO_CROSS_KEY = "cross_uoro"
PARAM_FACTOR = "param_factor"  # UORO's θ̃ [P_m] of a cross block, next to s̃ (approx.UORO_STATE) [N_l]


def _layer(l: int) -> str:
    return f"layer{l}"


def _zero_block(like: Tensor, shape: torch.Size, uoro: bool) -> Tensor | dict[str, Tensor]:
    """Zero cross block for a batch like ``like`` [B, ·]: dense [B, N_l, P_m] or UORO's s̃, θ̃."""
    if not uoro:
        return like.new_zeros(like.shape[0], *shape)
    return {approx.UORO_STATE: like.new_zeros(like.shape[0], shape[0]),
            PARAM_FACTOR: like.new_zeros(like.shape[0], shape[1])}  # fmt: skip


class StackedELSTM(RecurrentCoreBase):
    """L eLSTM layers (each an :class:`rtrl_modules.ELSTM` core) with exact or approximate RTRL.

    Args:
        input_size: D.
        hidden_sizes: N_l per layer (its length is the depth L).
        output_gate: eLSTM output gates (h = σ(O[x; c]) ⊙ c); without, h = c.
        gradient: default mode, ``"rtrl"`` (exact), ``"rtrl_layerwise"`` (layer-wise RTRL, the
            practical approximation), ``"rtrl_uoro"`` (UORO cross-layer blocks) or ``"tbptt"``.
        lower_gradient: in ``"rtrl_layerwise"``, ``"rtrl"`` or ``"tbptt"`` for layers below the top.
    """

    gradient_modes = GRADIENT_MODES
    state_hint = (
        "initial_state(batch_size, gradient=mode) (every layer's sensitivities and the "
        "cross-layer blocks of that mode)"
    )

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_gate: bool = True,
        gradient: str = "rtrl",
        lower_gradient: str = "rtrl",
    ) -> None:
        super().__init__()
        if len(hidden_sizes) == 0:
            raise ValueError("hidden_sizes must name at least one layer")
        self.gradient = self.check_gradient(gradient)
        self.lower_gradient = check_gradient_mode(lower_gradient, LOWER_GRADIENT_MODES)
        sizes = [input_size, *hidden_sizes]
        self.layers = nn.ModuleList(
            ELSTM(sizes[i], sizes[i + 1], output_gate=output_gate) for i in range(len(hidden_sizes))
        )
        self.input_size, self.hidden_sizes = input_size, list(hidden_sizes)
        self.output_size = hidden_sizes[-1]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ----------------------------------------------------------------------------- parameter sets
    def _recurrent(self, l: int) -> list[Tensor]:
        """θ_l trained by layer l's own element-wise RTRL block (weight_ih, weight_hh, bias)."""
        return list(self.layers[l].cell.rtrl_parameters().values())

    def _theta(self, l: int) -> list[Tensor]:
        """θ_l as seen by the layers above: recurrent parameters plus the output gate."""
        gate = self.layers[l].cell.output_gate
        return self._recurrent(l) + ([] if gate is None else [gate.weight, gate.bias])

    def _units(self, l: int, with_gate: bool) -> Tensor:
        """Hidden unit of every entry of θ_l (flattened), [P_l]."""
        n = self.hidden_sizes[l]
        params = self._theta(l) if with_gate else self._recurrent(l)
        dims = [0, 1, 1, 0, 0][: len(params)]  # weight_ih rows, [2, N] stacks, gate rows, gate bias
        return torch.cat([unit_index(p.shape, n, d) for p, d in zip(params, dims)]).to(params[0].device)

    def cross_shapes(self) -> dict[tuple[int, int], torch.Size]:
        """(l, m) → per-example shape [N_l, P_m] of the dense block ∂c_l/∂θ_m, m < l."""
        sizes = [sum(p.numel() for p in self._theta(m)) for m in range(self.num_layers)]
        return {
            (l, m): torch.Size((self.hidden_sizes[l], sizes[m]))
            for l in range(self.num_layers)
            for m in range(l)
        }

    # ----------------------------------------------------------------------------- state contract
    def _reference_parameter(self) -> Tensor:
        return self.layers[0].cell.weight_ih

    def state_shapes(self) -> dict[NestedKey, torch.Size]:
        """("layer{l}", "c") → [N_l]."""
        return {(_layer(l), STATE_KEY): torch.Size((n,)) for l, n in enumerate(self.hidden_sizes)}

    def sensitivity_shapes(self) -> dict[NestedKey, torch.Size]:
        """("layer{l}", name) → per-example shape of layer l's own (element-wise) sensitivity."""
        return {
            (_layer(l), name): shape
            for l, core in enumerate(self.layers)
            for name, shape in core.sensitivity_shapes().items()
        }

    def sensitivity_keys(
        self, cross: bool = True, gradient: str | None = None
    ) -> dict[NestedKey, torch.Size]:
        """Own blocks ("layer{l}", "sensitivity", name); with ``cross``, the cross-layer ones.

        The cross-layer blocks (m < l) in the layout of ``gradient`` (default: the core's mode):
        UORO (``"rtrl_uoro"``): ("layer{l}", "cross_uoro", "layer{m}", "state_factor") [N_l] and
        (..., "param_factor") [P_m]; otherwise dense ("layer{l}", "cross", "layer{m}") [N_l, P_m].
        """
        keys = {(layer, SENSITIVITY_KEY, name): s for (layer, name), s in self.sensitivity_shapes().items()}
        if not cross:
            return keys
        for (l, m), (n, p) in self.cross_shapes().items():
            if self.check_gradient(gradient) == "rtrl_uoro":
                block = (_layer(l), UORO_CROSS_KEY, _layer(m))
                keys[(*block, approx.UORO_STATE)] = torch.Size((n,))
                keys[(*block, PARAM_FACTOR)] = torch.Size((p,))
            else:
                keys[(_layer(l), CROSS_KEY, _layer(m))] = torch.Size((n, p))
        return keys

    def initial_state(
        self,
        batch_size: int,
        sensitivities: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        cross: bool | None = None,
        gradient: str | None = None,
    ) -> TensorDict:
        """Zero state for ``gradient`` (default: the core's mode); ``cross`` (default: when that mode
        carries cross-layer blocks, ``"rtrl"`` or ``"rtrl_uoro"``) adds them in its layout."""
        gradient = self.check_gradient(gradient)
        cross = gradient in CROSS_MODES if cross is None else cross
        entries = dict(self.state_shapes())
        if sensitivities:
            entries.update(self.sensitivity_keys(cross, gradient))
        return self._zero_state(batch_size, entries, device, dtype)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        state: TensorDict | None = None,
        is_init: Tensor | None = None,
        gradient: str | None = None,
    ) -> tuple[Tensor, TensorDict]:
        """x [B, T, D] → (h of the top layer [B, T, N_{L-1}], detached new state)."""
        gradient = self.check_gradient(gradient)
        if gradient in CROSS_MODES:
            return self._forward_exact(x, state, is_init, gradient)
        inp, new = x, {}
        for l, core in enumerate(self.layers):
            lower = l < self.num_layers - 1
            mode = "tbptt" if gradient == "tbptt" or (lower and self.lower_gradient == "tbptt") else "rtrl"
            sub = None if state is None else state.get(_layer(l))
            inp, new[_layer(l)] = core(inp, sub, is_init=is_init, gradient=mode)
        return inp, TensorDict(new, batch_size=[x.shape[0]])

    def _forward_exact(self, x: Tensor, state: TensorDict | None, is_init: Tensor | None, gradient: str):
        """Segment form with all L(L+1)/2 blocks carried: exact (``"rtrl"``) or UORO cross blocks."""
        x, keep = self._check_input(x, is_init)
        batch, steps, _ = x.shape
        track = torch.is_grad_enabled()
        c0 = list(self._read_state(state, batch, x).values())
        carried = self._carried(state, batch, x, keep, gradient) if track else None
        if carried is not None:
            own0, cross0 = carried
            for l in range(self.num_layers):
                c0[l] = self._inject(l, c0[l], own0[l], cross0)

        # In-segment unroll with plain autograd (BPTT through the whole stack inside the segment).
        inp, trace = x, []
        for l, core in enumerate(self.layers):
            cell = core.cell
            pre = (inp @ cell.weight_ih.t()).view(batch, steps, cell.num_gates, cell.hidden_size)
            c, cs = c0[l], []
            for t in range(steps):
                c = cell.step(pre[:, t], c * keep[:, t, None], **cell.recurrent_parameters())
                cs.append(c)
            c_seq = torch.stack(cs, dim=1)
            trace.append((inp.detach(), pre.detach(), c_seq.detach()))
            inp = cell.output(inp, c_seq)

        new = TensorDict(
            {_layer(l): {STATE_KEY: tr[2][:, -1]} for l, tr in enumerate(trace)}, batch_size=[batch]
        )
        if track:
            with torch.no_grad():
                own, cross = self._carry(trace, [c.detach() for c in c0], keep, carried, gradient)
            for l in range(self.num_layers):
                names = self.layers[l].cell.rtrl_parameters()
                sizes = [p.numel() for p in names.values()]
                for (name, p), s in zip(names.items(), own[l].split(sizes, dim=1)):
                    new[_layer(l), SENSITIVITY_KEY, name] = s.reshape(batch, *p.shape)
                for m in range(l):
                    if isinstance(cross[l][m], dict):  # UORO factors
                        for key, factor in cross[l][m].items():
                            new[_layer(l), UORO_CROSS_KEY, _layer(m), key] = factor
                    else:
                        new[_layer(l), CROSS_KEY, _layer(m)] = cross[l][m]
        return inp, new

    # ----------------------------------------------------------------------------- sensitivities
    def _carried(self, state: TensorDict | None, batch: int, x: Tensor, keep: Tensor, gradient: str):
        """(own [l] flat [B, P_rec_l], cross [l][m]) from the state, or None if all start.

        cross [l][m]: dense [B, N_l, P_m] (``"rtrl"``) or UORO factors {"state_factor": [B, N_l],
        "param_factor": [B, P_m]} (``"rtrl_uoro"``).
        """
        entries = self.sensitivity_keys(cross=True, gradient=gradient)
        blocks = self._read_sensitivities(state, batch, x, keep, gradient, entries)
        if blocks is None:
            return None
        own = [
            torch.cat(
                [blocks[_layer(l), SENSITIVITY_KEY, n].reshape(batch, -1) for n in core.sensitivity_shapes()],
                dim=1,
            )
            for l, core in enumerate(self.layers)
        ]

        def block(l: int, m: int) -> Tensor | dict[str, Tensor]:
            if gradient == "rtrl":
                return blocks[_layer(l), CROSS_KEY, _layer(m)]
            keys = (approx.UORO_STATE, PARAM_FACTOR)
            return {k: blocks[_layer(l), UORO_CROSS_KEY, _layer(m), k] for k in keys}

        return own, [[block(l, m) for m in range(l)] for l in range(self.num_layers)]

    def _inject(self, l: int, c0: Tensor, own0: Tensor, cross0: list[list]) -> Tensor:
        """c0 of layer l, wired so that backward adds Σ_b (∂L/∂c0) · (own + cross blocks)."""
        groups = [self._recurrent(l)] + [self._theta(m) for m in range(l)]
        units = self._units(l, with_gate=False)

        def contract_cross(g: Tensor, block: Tensor | dict[str, Tensor]) -> Tensor:
            if isinstance(block, dict):  # Σ_b (g_b · s̃_b) θ̃_b
                return approx.contract_uoro(g, block, PARAM_FACTOR)
            return contract_dense(g, block)

        def pullback(g: Tensor) -> list[Tensor]:
            flats = [contract_compact(g, own0, units)] + [contract_cross(g, cross0[l][m]) for m in range(l)]
            grads = []
            for params, flat in zip(groups, flats):
                parts = flat.split([p.numel() for p in params])
                grads += [part.view_as(p) for part, p in zip(parts, params)]
            return grads

        return inject_sensitivities(c0, [p for params in groups for p in params], pullback)

    def _carry(self, trace, c0: list[Tensor], keep: Tensor, carried, gradient: str = "rtrl"):
        """Run the recursion of all L(L+1)/2 blocks over the segment; returns (own, cross) at T.

        ``"rtrl"``: exact dense cross blocks; ``"rtrl_uoro"``: their UORO factors (module docstring).
        """
        batch, steps = keep.shape
        L = self.num_layers
        uoro = gradient == "rtrl_uoro"
        shapes = self.cross_shapes()
        if carried is None:
            own = [x.new_zeros(batch, sum(p.numel() for p in self._recurrent(l))) for l, x in enumerate(c0)]
            cross = [[_zero_block(c0[l], shapes[l, m], uoro) for m in range(l)] for l in range(L)]
        else:
            own, cross = [s.clone() for s in carried[0]], [list(row) for row in carried[1]]
        units = [self._units(l, with_gate=False) for l in range(L)]
        gate_units = [self._units(l, with_gate=True)[units[l].numel() :] for l in range(L)]

        local = []  # per layer: J [B, T, N] (cut at episode starts), d_pre [B, T, K, N], d_params
        for l, (_inp, pre, c_seq) in enumerate(trace):
            cell = self.layers[l].cell
            c_prev = torch.cat((c0[l].unsqueeze(1), c_seq[:, :-1]), dim=1) * keep.unsqueeze(-1)
            params = {n: p.detach() for n, p in cell.recurrent_parameters().items()}
            jac, d_pre, d_params = cell.local_derivatives(pre, c_prev, params)
            local.append((jac * keep.unsqueeze(-1), d_pre, d_params))

        for t in range(steps):
            grads_h: list[Tensor] = []  # exact: dense dh_{l-1,t}/dθ_m for m < l
            read_outs: list[tuple] = []  # UORO: (∂h_k/∂c_k, ∂h_k/∂h_{k-1}, gate immediate) per layer k
            for l, (inp, _pre, c_seq) in enumerate(trace):
                cell = self.layers[l].cell
                jac, d_pre_seq, d_params = local[l]
                j, d_pre = jac[:, t], d_pre_seq[:, t]
                immediate = [(d_pre.unsqueeze(-1) * inp[:, t, None, None, :]).reshape(batch, -1)]
                immediate += [d[:, t].reshape(batch, -1) for d in d_params.values()]
                own[l] = j[:, units[l]] * own[l] + torch.cat(immediate, dim=1)
                if l > 0:  # ∂c_l/∂h_{l-1} = Σ_k diag(d_pre_k) W_k, [B, N_l, N_{l-1}]
                    dc_dinp = (
                        d_pre.unsqueeze(-1) * cell.weight_ih.view(cell.num_gates, cell.hidden_size, -1)
                    ).sum(1)
                    for m in range(l):
                        if not uoro:
                            cross[l][m] = j.unsqueeze(-1) * cross[l][m] + dc_dinp @ grads_h[m]
                            continue
                        noise = approx.random_signs(batch, cell.hidden_size, like=j)  # ν [B, N_l]
                        v = (noise.unsqueeze(1) @ dc_dinp).squeeze(1)  # νᵀ ∂c_l/∂h_{l-1}
                        nu_f = self._uoro_vjp(v, l - 1, m, read_outs, own, cross, units, gate_units)
                        block = cross[l][m]
                        theta = {PARAM_FACTOR: block[PARAM_FACTOR] * keep[:, t, None]}
                        forward = j * block[approx.UORO_STATE]  # J_l s̃ (J_l is 0 at episode starts)
                        cross[l][m] = approx.uoro_combine(forward, theta, noise, {PARAM_FACTOR: nu_f})
                if l < L - 1:
                    dh_dc, dh_dinp, gate_imm = output_gate_derivatives(
                        cell.output_gate, inp[:, t], c_seq[:, t]
                    )
                    if uoro:
                        read_outs.append((dh_dc, dh_dinp, gate_imm))
                        continue
                    new = [dh_dc @ cross[l][m] + dh_dinp @ grads_h[m] for m in range(l)]
                    own_dense = compact_to_dense(dh_dc, own[l], units[l])
                    if gate_imm is not None:
                        gate_dense = diagonal_to_dense(gate_imm, gate_units[l], cell.hidden_size)
                        own_dense = torch.cat((own_dense, gate_dense), dim=-1)
                    grads_h = new + [own_dense]
        return own, cross

    def _uoro_vjp(
        self, v: Tensor, k: int, m: int, read_outs: list[tuple], own: list[Tensor], cross: list[list],
        units: list[Tensor], gate_units: list[Tensor],
    ) -> Tensor:  # fmt: skip
        """vᵀ ∂h_{k,t}/∂θ_m [B, P_m] for v [B, N_k], m ≤ k, with layer k's blocks at step t.

        ∂h_k/∂θ_k = ∂h_k/∂c_k · (compact own block) ⊕ the gate's immediate term;
        ∂h_k/∂θ_m = ∂h_k/∂c_k · s̃ θ̃ᵀ + ∂h_k/∂h_{k-1} · ∂h_{k-1}/∂θ_m for m < k (recursing down).
        """
        dh_dc, dh_dinp, gate_imm = read_outs[k]
        u = (v.unsqueeze(1) @ dh_dc).squeeze(1)  # vᵀ ∂h_k/∂c_k [B, N_k]
        if m == k:
            out = u[:, units[k]] * own[k]
            return out if gate_imm is None else torch.cat((out, v[:, gate_units[k]] * gate_imm), dim=1)
        block = cross[k][m]
        out = (u * block[approx.UORO_STATE]).sum(-1, keepdim=True) * block[PARAM_FACTOR]
        down = (v.unsqueeze(1) @ dh_dinp).squeeze(1)
        return out + self._uoro_vjp(down, k - 1, m, read_outs, own, cross, units, gate_units)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}, lower_gradient={self.lower_gradient!r}"
