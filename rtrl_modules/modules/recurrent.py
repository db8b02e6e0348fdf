"""RTRL cores as TorchRL modules: drop-in replacements for ``torchrl.modules.LSTMModule``.

    module = ELSTMModule(input_size=64, hidden_size=128, in_key="embed", out_key="features")
    env = env.append_transform(module.make_tensordict_primer())     # plus InitTracker()
    policy = TensorDictSequential(module, head)                     # acting: one step, no sensitivities
    with set_recurrent_mode(True):                                   # what every TorchRL loss does
        policy(batch)                                                # batch [num_envs, T]: exact RTRL

Keys (LSTMModule-style): ``in_keys = [value, state, "is_init"]``, ``out_keys = [out, ("next", state)]``.
The state key holds only the cell state ``c`` [*batch, N]; sensitivities never enter the
tensordict: the module carries them per environment slot (see :mod:`.carry`).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, unravel_key_list
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor

from ..core import ELSTM, LRU, SRU, IndRNN, RTRLCore
from ..core.checks import check_gradient_mode
from ..core.functional import GRADIENT_MODES
from ..core.recurrent import SENSITIVITY_KEY, STATE_KEY
from .carry import CarriedSensitivities

DEFAULT_STATE_KEY = "recurrent_state"
IS_INIT_KEY = "is_init"


def _as_tuple(key: NestedKey) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def resolve_keys(
    in_key: NestedKey | None,
    in_keys: list[NestedKey] | None,
    out_key: NestedKey | None,
    out_keys: list[NestedKey] | None,
    state_key: NestedKey = DEFAULT_STATE_KEY,
    owner: str = "RTRLModule",
) -> tuple[list[NestedKey], list[NestedKey]]:
    """LSTMModule's key rules: ``in_key``/``out_key`` xor full ``in_keys``/``out_keys``."""
    if (in_key is None) == (in_keys is None):
        raise ValueError(
            f"{owner}: give exactly one of in_key or in_keys, got in_key={in_key}, in_keys={in_keys}"
        )
    if (out_key is None) == (out_keys is None):
        raise ValueError(
            f"{owner}: give exactly one of out_key or out_keys, got out_key={out_key}, out_keys={out_keys}"
        )
    in_keys = [in_key, state_key] if in_keys is None else list(unravel_key_list(list(in_keys)))
    out_keys = (
        [out_key, ("next", *_as_tuple(state_key))]
        if out_keys is None
        else list(unravel_key_list(list(out_keys)))
    )
    if len(in_keys) == 2:
        in_keys.append(IS_INIT_KEY)
    if len(in_keys) != 3:
        raise ValueError(f"{owner}: in_keys must be [value, state] or [value, state, is_init], got {in_keys}")
    if len(out_keys) != 2:
        raise ValueError(f"{owner}: out_keys must be [output, ('next', state)], got {out_keys}")
    return in_keys, out_keys


class RTRLModule(TensorDictModuleBase):
    """A :class:`~rtrl_modules.core.RTRLCore` as a TorchRL module (LSTMModule/GRUModule semantics).

    * **Step mode** (default; collectors, ``env.rollout``): tensordict [*B] → one step per row.
      Reads ``value`` [*B, D], ``state`` [*B, N] (zeros if absent and every row starts an episode)
      and ``is_init`` [*B, 1]; writes ``out`` [*B, N'] and ``("next", state)`` [*B, N]. Computes no
      sensitivities; gradients, if any, are truncated at the step.
    * **Recurrent mode** (``torchrl.modules.set_recurrent_mode(True)``, as inside every TorchRL
      loss): tensordict [B, T] (or [T], or [..., B, T] flattened), time last. The segment starts
      from the actor's state at t = 0 (``state[:, 0]``) and restarts at every ``is_init``. With
      ``gradient="rtrl"``/``"rtrl_stepwise"`` and autograd on, S_0 comes from the sensitivities the
      module carries per env slot and S_T is stored back, so ``loss.backward()`` gives exact,
      untruncated RTRL gradients across consecutive segments. Row ``b`` of the batch is env slot
      ``b`` unless ``slot_key`` is given (then ``td[slot_key][:, 0]`` names each row's slot, which
      lets minibatches hold a subset of envs).

    Args:
        core: the RTRL core to wrap.
        in_key / in_keys, out_key / out_keys: as in ``LSTMModule``; with ``in_key``/``out_key`` the
            state key is ``"recurrent_state"`` and is written to ``("next", "recurrent_state")``.
        gradient: ``"rtrl"`` (default: the core's), ``"rtrl_stepwise"`` or ``"tbptt"``.
        slot_key: optional key of an integer env-slot index [B, T] in the training batch.
        default_recurrent_mode: recurrent mode outside any ``set_recurrent_mode`` context.
    """

    def __init__(
        self,
        core: RTRLCore,
        *,
        in_key: NestedKey | None = None,
        in_keys: list[NestedKey] | None = None,
        out_key: NestedKey | None = None,
        out_keys: list[NestedKey] | None = None,
        gradient: str | None = None,
        slot_key: NestedKey | None = None,
        default_recurrent_mode: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(core, RTRLCore):
            raise TypeError(f"core must be an rtrl_modules RTRLCore, got {type(core).__name__}")
        self.core = core
        if gradient is not None:
            core.gradient = check_gradient_mode(gradient)
        self.in_keys, self.out_keys = resolve_keys(
            in_key, in_keys, out_key, out_keys, owner=type(self).__name__
        )
        if slot_key is not None:
            self.in_keys = [*self.in_keys, slot_key]
        self.slot_key = slot_key
        self._recurrent_mode = default_recurrent_mode
        self.carried = CarriedSensitivities()

    # ------------------------------------------------------------------ properties (LSTMModule-like)
    @property
    def input_size(self) -> int:
        return self.core.input_size

    @property
    def hidden_size(self) -> int:
        return self.core.hidden_size

    @property
    def output_size(self) -> int:
        return self.core.output_size

    @property
    def gradient(self) -> str:
        return self.core.gradient

    @gradient.setter
    def gradient(self, value: str) -> None:
        self.core.gradient = check_gradient_mode(value)

    @property
    def recurrent_mode(self) -> bool:
        from torchrl.modules.tensordict_module.rnn import recurrent_mode

        mode = recurrent_mode()
        return bool(self._recurrent_mode) if mode is None else bool(mode)

    @property
    def value_key(self) -> NestedKey:
        return self.in_keys[0]

    @property
    def state_key(self) -> NestedKey:
        return self.in_keys[1]

    @property
    def is_init_key(self) -> NestedKey:
        return self.in_keys[2]

    def make_tensordict_primer(self):
        """``TensorDictPrimer`` declaring the cell state [N] (zeros at reset); no sensitivities."""
        from torchrl.data import Unbounded
        from torchrl.envs import TensorDictPrimer

        if _as_tuple(self.out_keys[1]) != ("next", *_as_tuple(self.state_key)):
            raise RuntimeError(
                "make_tensordict_primer needs out_keys[1] == ('next', in_keys[1]); got "
                f"in_keys={self.in_keys}, out_keys={self.out_keys}"
            )
        dtype = self.core.cell.weight_ih.dtype
        return TensorDictPrimer(
            {self.state_key: Unbounded(shape=(self.hidden_size,), dtype=dtype)}, expand_specs=True
        )

    # ------------------------------------------------------------------ carried sensitivities
    def reset_sensitivities(self, slots: Tensor | list[int] | None = None) -> None:
        """Forget the carried sensitivities (all, or of some env slots)."""
        self.carried.reset(slots)

    def get_sensitivities(self) -> TensorDict | None:
        """Carried sensitivities (a detached copy, [slots, ...]) for checkpoints; None if none yet."""
        return self.carried.state()

    def set_sensitivities(self, state: TensorDict | None) -> None:
        """Restore what :meth:`get_sensitivities` returned."""
        self.carried.load(state)

    def get_extra_state(self) -> dict:
        # Part of state_dict(), so checkpoints restore the carried sensitivities with the weights.
        # Plain tensors only, so torch.load(..., weights_only=True) can read it.
        state = self.carried.state()
        return {} if state is None else dict(state.flatten_keys(".").items())

    def set_extra_state(self, state: dict) -> None:
        if not state:
            self.carried.load(None)
            return
        slots = state["start_c"].shape[0]
        self.carried.load(TensorDict(dict(state), batch_size=[slots]).unflatten_keys("."))

    # ------------------------------------------------------------------ forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        recurrent = self.recurrent_mode
        shape = tensordict.shape
        if recurrent:
            if tensordict.ndim == 0:
                raise ValueError(
                    f"{type(self).__name__} in recurrent mode needs a tensordict with a time dimension "
                    "(last batch dim), got a 0-d tensordict"
                )
            shaped = {1: tensordict.unsqueeze(0), 2: tensordict}.get(tensordict.ndim)
            if shaped is None:
                shaped = tensordict.flatten(0, -2)
        else:
            shaped = tensordict.reshape(-1).unsqueeze(-1)

        value, is_init = self._read_inputs(shaped)
        c0 = self._read_state(shaped, is_init, value)
        if recurrent:
            out, c_last = self._run_segment(shaped, value, c0, is_init)
        else:
            out, new_state = self.core(value, TensorDict({STATE_KEY: c0}, [c0.shape[0]]), is_init, "tbptt")
            c_last = new_state[STATE_KEY]

        shaped.set(self.out_keys[0], out)
        if not recurrent:
            shaped.set(self.out_keys[1], c_last.unsqueeze(1))
        elif self.out_keys[1] not in shaped.keys(include_nested=True):
            # Like LSTMModule: the final state at the last step, zeros elsewhere. Collected
            # ("next", state) entries, when present, are left as the actor wrote them.
            nxt = torch.zeros_like(c0).unsqueeze(1).expand(-1, value.shape[1], -1).clone()
            nxt[:, -1] = c_last
            shaped.set(self.out_keys[1], nxt)
        if shaped is not tensordict:
            tensordict.update(shaped.reshape(shape))
        return tensordict

    def _read_inputs(self, td: TensorDictBase) -> tuple[Tensor, Tensor]:
        keys = td.keys(include_nested=True)
        if self.value_key not in keys:
            raise KeyError(f"{type(self).__name__}: input key {self.value_key!r} not found in the tensordict")
        if self.is_init_key not in keys:
            raise KeyError(
                f"{type(self).__name__}: no {self.is_init_key!r} entry, so episode starts cannot be seen and "
                "the recurrent state would leak across episodes. Add torchrl.envs.InitTracker() to the env "
                "(TransformedEnv(env, InitTracker())), or pass auto_register_policy_transforms=True to the "
                "Collector."
            )
        value = td.get(self.value_key)
        is_init = td.get(self.is_init_key)
        if is_init.dim() == value.dim():
            is_init = is_init.squeeze(-1)
        if is_init.dtype != torch.bool:
            raise TypeError(f"{self.is_init_key!r} must be a bool tensor, got {is_init.dtype}")
        return value, is_init

    def _read_state(self, td: TensorDictBase, is_init: Tensor, value: Tensor) -> Tensor:
        state = td.get(self.state_key, None)
        if state is None:
            if bool(is_init[:, 0].all()):
                return value.new_zeros(value.shape[0], self.hidden_size)
            raise KeyError(
                f"{type(self).__name__}: the recurrent state {self.state_key!r} is missing from the "
                "tensordict while some rows continue an episode, so the state was dropped between steps. "
                "Add the primer: "
                "env.append_transform(module.make_tensordict_primer()) (or "
                "torchrl.modules.utils.get_primers_from_module(policy)), or pass "
                "auto_register_policy_transforms=True to the Collector."
            )
        if state.shape[-1] != self.hidden_size:
            raise ValueError(
                f"{type(self).__name__}: state {self.state_key!r} has shape {tuple(state.shape)}, "
                f"expected [..., {self.hidden_size}]"
            )
        c0 = state[:, 0]
        return torch.where(is_init[:, :1], torch.zeros_like(c0), c0)

    def _run_segment(
        self, td: TensorDictBase, value: Tensor, c0: Tensor, is_init: Tensor
    ) -> tuple[Tensor, Tensor]:
        gradient = self.core.gradient
        carry = torch.is_grad_enabled() and gradient != "tbptt"
        state = TensorDict({STATE_KEY: c0}, batch_size=[c0.shape[0]])
        slots = None
        if carry:
            slots, num_slots = self._slots(td, c0)
            state[SENSITIVITY_KEY] = self.carried.fetch(
                slots, c0, is_init[:, 0], self.core.sensitivity_shapes(), num_slots
            )
        out_buffer = None
        if carry and gradient == "rtrl":
            end = self.carried.end_buffer(slots)
            out_buffer = None if end is None else end["weight_ih"]
        out, new_state = self.core(
            value, state, is_init, gradient, track_sensitivities=carry, sensitivity_out=out_buffer
        )
        if carry:
            self.carried.store(slots, new_state[SENSITIVITY_KEY])
        return out, new_state[STATE_KEY]

    def _slots(self, td: TensorDictBase, c0: Tensor) -> tuple[Tensor, int]:
        batch = c0.shape[0]
        if self.slot_key is None or self.slot_key not in td.keys(include_nested=True):
            num_slots = max(batch, self.carried.num_slots)
            return torch.arange(batch, device=c0.device), num_slots
        slots = td.get(self.slot_key)
        slots = slots.reshape(batch, -1)[:, 0].long().to(c0.device)
        if slots.unique().numel() != batch:
            raise ValueError(
                f"{type(self).__name__}: two rows of the batch name the same env slot in "
                f"{self.slot_key!r}; each row must be a different env's segment"
            )
        num_slots = max(int(slots.max()) + 1, self.carried.num_slots)
        return slots, num_slots

    def extra_repr(self) -> str:
        return f"in_keys={self.in_keys}, out_keys={self.out_keys}, gradient={self.gradient!r}"


class ELSTMModule(RTRLModule):
    """eLSTM (Irie et al., 2024) as a TorchRL module; ``out`` = σ(O[x; c] + b) ⊙ c [*, hidden_size].

    ``forget_bias`` sets the initial b_f (see :class:`~rtrl_modules.cells.ELSTMCell`); other keyword
    arguments go to :class:`RTRLModule` (keys, ``slot_key``, ...).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_gate: bool = True,
        gradient: str = "rtrl",
        forget_bias: float | None = None,
        **kwargs,
    ) -> None:
        core = ELSTM(
            input_size, hidden_size, output_gate=output_gate, gradient=gradient, forget_bias=forget_bias
        )
        super().__init__(core, **kwargs)


class IndRNNModule(RTRLModule):
    """IndRNN core as a TorchRL module; ``out`` = c [*, hidden_size]."""

    def __init__(self, input_size: int, hidden_size: int, gradient: str = "rtrl", **kwargs) -> None:
        super().__init__(IndRNN(input_size, hidden_size, gradient=gradient), **kwargs)


class LRUModule(RTRLModule):
    """Real diagonal linear recurrent unit as a TorchRL module; ``out`` = c [*, hidden_size]."""

    def __init__(self, input_size: int, hidden_size: int, gradient: str = "rtrl", **kwargs) -> None:
        super().__init__(LRU(input_size, hidden_size, gradient=gradient), **kwargs)


class SRUModule(RTRLModule):
    """SRU-style core as a TorchRL module; ``out`` = c [*, hidden_size]."""

    def __init__(self, input_size: int, hidden_size: int, gradient: str = "rtrl", **kwargs) -> None:
        super().__init__(SRU(input_size, hidden_size, gradient=gradient), **kwargs)


__all__ = [
    "GRADIENT_MODES",
    "RTRLModule",
    "ELSTMModule",
    "IndRNNModule",
    "LRUModule",
    "SRUModule",
]
