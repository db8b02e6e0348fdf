"""``RecurrentCoreBase``: the contract and the input-checking prologue shared by every core.

Every core (the element-wise :class:`~rtrl_modules.core.recurrent.RTRLCore` and the dense
references in :mod:`rtrl_modules.limits`) is called the same way,

    out, state = core(x, state, is_init=is_init, gradient=...)   # x [B, T, D], is_init [B, T] bool

and carries a ``TensorDict`` state of batch size [B]. What a subclass declares:

* ``input_size`` and the class attribute ``gradient_modes`` (the gradient modes it supports);
* :meth:`state_shapes`: per-example shape of each carried state entry (default ``"c"`` [N]);
* :meth:`sensitivity_shapes`: per-example shape of the sensitivity of each RTRL-trained parameter,
  stored in the state under :meth:`sensitivity_keys` (default ``("sensitivity", name)``);
* :meth:`_reference_parameter`: a parameter that gives the default device and dtype.

What the base gives: :meth:`initial_state` (zeros), :meth:`check_gradient` (the mode, with the
valid choices, or the new name of a renamed mode, in the error), and the forward prologue
(:meth:`_prologue`: mode, input ``x``, keep mask from ``is_init``; :meth:`_read_state` and
:meth:`_read_sensitivities`: the carried state, checked, detached, in ``x``'s dtype).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from tensordict import TensorDict
from tensordict.utils import NestedKey
from torch import Tensor, nn

from .checks import check_gradient_mode, check_input, keep_mask
from .functional import GRADIENT_MODES

STATE_KEY = "c"
SENSITIVITY_KEY = "sensitivity"

def _absent_prefix(state: TensorDict, key: NestedKey) -> NestedKey:
    """The shortest prefix of ``key`` that ``state`` lacks (``key`` itself if it is a string)."""
    if isinstance(key, str):
        return key
    for i in range(1, len(key)):
        if state.get(key[:i] if i > 1 else key[0], None) is None:
            return key[:i] if i > 1 else key[0]
    return key


class RecurrentCoreBase(nn.Module):
    """Base of every recurrent core: state contract, ``initial_state`` and the input checks."""

    gradient_modes: ClassVar[tuple[str, ...]] = GRADIENT_MODES
    input_size: int
    # How to make a state with every sensitivity; named in the missing-sensitivities error.
    state_hint: ClassVar[str] = "core.initial_state(batch_size)"

    # ----------------------------------------------------------------------------- contract
    def _reference_parameter(self) -> Tensor:
        """The parameter whose device and dtype the state and the inputs must have."""
        return next(self.parameters())

    def state_shapes(self) -> dict[NestedKey, torch.Size]:
        """Per-example shape of each carried state entry (besides the sensitivities)."""
        return {STATE_KEY: torch.Size((self.hidden_size,))}

    def sensitivity_shapes(self, gradient: str | None = None) -> dict[NestedKey, torch.Size]:
        """Per-example sensitivity shape of each RTRL-trained parameter, by parameter name, in the
        ``gradient`` mode (default: the core's; exact cores carry the same layout in every mode)."""
        raise NotImplementedError

    def sensitivity_keys(self, gradient: str | None = None) -> dict[NestedKey, torch.Size]:
        """Per-example shape of each carried sensitivity entry, by its key in the state."""
        return {(SENSITIVITY_KEY, name): shape for name, shape in self.sensitivity_shapes(gradient).items()}

    # ----------------------------------------------------------------------------- state
    def initial_state(
        self,
        batch_size: int,
        sensitivities: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        gradient: str | None = None,
    ) -> TensorDict:
        """Zero state (and zero sensitivities of the ``gradient`` mode, default the core's) for
        ``batch_size`` sequences."""
        entries = dict(self.state_shapes())
        if sensitivities:
            entries.update(self.sensitivity_keys(gradient))
        return self._zero_state(batch_size, entries, device, dtype)

    def _zero_state(
        self,
        batch_size: int,
        entries: dict[NestedKey, torch.Size],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TensorDict:
        ref = self._reference_parameter()
        device = ref.device if device is None else torch.device(device)
        dtype = ref.dtype if dtype is None else dtype
        state = TensorDict({}, batch_size=[batch_size], device=device)
        for key, shape in entries.items():
            state[key] = torch.zeros(batch_size, *shape, device=device, dtype=dtype)
        return state

    # ----------------------------------------------------------------------------- prologue
    def check_gradient(self, gradient: str | None = None) -> str:
        """The gradient mode to use: ``gradient``, or the core's default when None; checked."""
        return check_gradient_mode(self.gradient if gradient is None else gradient, self.gradient_modes)

    def _check_input(self, x: Tensor, is_init: Tensor | None) -> tuple[Tensor, Tensor]:
        """(x checked and in the parameters' dtype, keep mask [B, T]: 0 at episode starts, else 1)."""
        x = check_input(x, self.input_size, self._reference_parameter().dtype)
        return x, keep_mask(is_init, x)

    def _prologue(
        self, x: Tensor, is_init: Tensor | None, gradient: str | None
    ) -> tuple[str, Tensor, Tensor]:
        """The checks every forward starts with: (gradient mode, x, keep mask)."""
        gradient = self.check_gradient(gradient)
        x, keep = self._check_input(x, is_init)
        return gradient, x, keep

    def _read_state(self, state: TensorDict | None, batch: int, x: Tensor) -> dict[NestedKey, Tensor]:
        """Each carried state entry (:meth:`state_shapes`), checked, detached, in x's dtype.

        ``state=None`` means zeros.
        """
        shapes = self.state_shapes()
        if state is None:
            return {key: x.new_zeros(batch, *shape) for key, shape in shapes.items()}
        if not isinstance(state, TensorDict):
            raise TypeError(
                f"state must be a TensorDict from initial_state() or a previous call, got {type(state)}"
            )
        out = {}
        for key, shape in shapes.items():
            value = state.get(key, None)
            if value is None:
                raise KeyError(f"state has no {key!r} entry; create it with core.initial_state(batch_size)")
            if value.shape != (batch, *shape):
                raise ValueError(
                    f"state[{key!r}] has shape {tuple(value.shape)} but this core needs [B, N] = "
                    f"{[batch, *shape]}: was the state made by a core of another size or batch?"
                )
            out[key] = value.to(x.dtype).detach()
        return out

    def _read_sensitivities(
        self,
        state: TensorDict | None,
        batch: int,
        x: Tensor,
        keep: Tensor,
        gradient: str,
        entries: dict[NestedKey, torch.Size] | None = None,
    ) -> dict[NestedKey, Tensor] | None:
        """The carried sensitivities (default: :meth:`sensitivity_keys`), checked, detached, x's dtype.

        None (zero sensitivities, which are then exact) when the state is None, or when it lacks
        some of them and every sequence starts an episode at its first step; lacking them
        otherwise is a KeyError.
        """
        if state is None:
            return None
        entries = self.sensitivity_keys() if entries is None else entries
        out = {}
        for key, shape in entries.items():
            value = state.get(key, None)
            if value is None:
                if bool((keep[:, 0] == 0).all()):
                    return None  # every sequence starts an episode: zero sensitivities are exact
                raise KeyError(
                    f"gradient={gradient!r} needs the carried sensitivities, but the state has no "
                    f"{_absent_prefix(state, key)!r} entry; create it with {self.state_hint} or start "
                    "every sequence with is_init=True"
                )
            if value.shape != (batch, *shape):
                name = key[1] if isinstance(key, tuple) and key[:1] == (SENSITIVITY_KEY,) else key
                raise ValueError(
                    f"sensitivity {name!r} has shape {tuple(value.shape)}, expected {(batch, *shape)}: "
                    "was the state made by a core of another size?"
                )
            out[key] = value.to(x.dtype).detach()
        return out


class CellCore(RecurrentCoreBase):
    """A core that runs one cell (``self.cell``: ``input_size``, ``hidden_size``, ``output_size``,
    ``weight_ih``, ``rtrl_parameters()``): the plumbing the element-wise and the block cores share.

    A subclass sets ``cell_type`` and runs its recurrence between :meth:`_carried` (c_0 and S_0 from
    the state) and :meth:`_new_state` (the detached state to return).
    """

    cell_type: ClassVar[type[nn.Module]] = nn.Module

    def __init__(self, cell: nn.Module, gradient: str = "rtrl") -> None:
        super().__init__()
        if not isinstance(cell, self.cell_type):
            raise TypeError(f"cell must be a {self.cell_type.__name__}, got {type(cell).__name__}")
        self.cell = cell
        self.gradient = self.check_gradient(gradient)

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def _reference_parameter(self) -> Tensor:
        return self.cell.weight_ih

    def _carried(self, state, batch: int, x: Tensor, keep: Tensor, gradient: str, track: bool):
        """(c_0, S_0 by parameter name or None) from the carried state (S_0 only where it is needed)."""
        c0 = self._read_state(state, batch, x)[STATE_KEY]
        if gradient == "tbptt" or not (track or torch.is_grad_enabled()):
            return c0, None
        sens = self._read_sensitivities(state, batch, x, keep, gradient)
        return c0, None if sens is None else {key[-1]: s for key, s in sens.items()}

    def _checked_restart(self, restart_state: Tensor | None, x: Tensor) -> Tensor | None:
        """``restart_state`` [B, T, *state shape], checked, detached, in x's dtype (None stays None)."""
        if restart_state is None:
            return None
        expected = (*x.shape[:2], *self.state_shapes()[STATE_KEY])
        if restart_state.shape != expected:
            raise ValueError(
                f"restart_state must have shape [B, T, *state] = {list(expected)}, "
                f"got {list(restart_state.shape)}"
            )
        return restart_state.to(x.dtype).detach()

    @staticmethod
    def _new_state(c_seq: Tensor, sens: dict[str, Tensor] | None) -> TensorDict:
        """The detached state after a segment: c_T and, when tracked, S_T by parameter name."""
        batch = c_seq.shape[0]
        state = TensorDict({STATE_KEY: c_seq[:, -1].detach()}, batch_size=[batch], device=c_seq.device)
        if sens is not None:
            state[SENSITIVITY_KEY] = TensorDict({name: s.detach() for name, s in sens.items()}, [batch])
        return state

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}"
