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

import warnings
from collections import deque

import torch
from tensordict import TensorDict, TensorDictBase, unravel_key
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey
from torch import Tensor

from ..core import ELSTM, LRU, SRU, IndRNN, RTRLCore
from ..core.checks import check_gradient_mode
from ..core.functional import GRADIENT_MODES
from ..core.recurrent import SENSITIVITY_KEY, STATE_KEY
from .carry import TRUNCATION_CAUSES, CarriedSensitivities

DEFAULT_STATE_KEY = "recurrent_state"


class TruncatedGradientWarning(UserWarning):
    """A segment start got the stored-state truncated gradient instead of exact RTRL."""


class TruncatedGradientError(RuntimeError):
    """Raised instead of :class:`TruncatedGradientWarning` by modules built with ``strict=True``."""


IS_INIT_KEY = "is_init"


def _as_tuple(key: NestedKey) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def _check_key(key, what: str, owner: str) -> NestedKey:
    """One NestedKey (a str or a tuple of str), unravelled; anything else is a clear TypeError."""

    def valid(k) -> bool:
        return isinstance(k, str) or (isinstance(k, tuple) and len(k) > 0 and all(map(valid, k)))

    if not valid(key):
        raise TypeError(
            f"{owner}: {what} must be a key (a str or a tuple of str), got {key!r}"
            + (f"; to pass several keys use {what}s=[...]" if isinstance(key, list) else "")
        )
    return unravel_key(key)


def _check_key_list(keys, what: str, owner: str) -> list[NestedKey]:
    if not isinstance(keys, (list, tuple)):
        hint = f"; for a single key use {what[:-1]}={keys!r}" if isinstance(keys, str) else ""
        raise TypeError(
            f"{owner}: {what} must be a list or tuple of keys, got {type(keys).__name__} {keys!r}{hint}"
        )
    return [_check_key(key, f"every entry of {what}", owner) for key in keys]


def _is_init_like(key: NestedKey, is_init_key: NestedKey) -> bool:
    return key == is_init_key or _as_tuple(key)[-1].lower().endswith("init")


_SINGLE_STATE = (
    "RTRL modules have a single recurrent state (the cell state c, like GRUModule's one hidden "
    "state; LSTMModule has two, h and c): use in_keys=[value, state] or [value, state, is_init] and "
    "out_keys=[out, ('next', state)], or in_key=/out_key= for the default state key "
    f"{DEFAULT_STATE_KEY!r}"
)


def resolve_keys(
    in_key: NestedKey | None,
    in_keys: list[NestedKey] | None,
    out_key: NestedKey | None,
    out_keys: list[NestedKey] | None,
    state_key: NestedKey = DEFAULT_STATE_KEY,
    owner: str = "RTRLModule",
    is_init_key: NestedKey = IS_INIT_KEY,
) -> tuple[list[NestedKey], list[NestedKey]]:
    """GRUModule's key rules (one state): ``in_key``/``out_key`` xor full ``in_keys``/``out_keys``.

    ``in_keys`` is ``[value, state]`` (``is_init_key`` is appended) or ``[value, state, is_init]``
    where the third key's last name ends in ``"init"`` (``"is_init"``, ``("agent", "is_init")``) or
    equals ``is_init_key``; ``out_keys`` is ``[out, next_state]``. Every key is a str or a tuple of
    str. LSTMModule's two-state layouts (``[value, h, c]``, ``[value, h, c, "is_init"]``, three
    ``out_keys``) are rejected with a message that says what to use instead: silently reading ``c``
    as the ``is_init`` marker would be wrong.
    """
    if (in_key is None) == (in_keys is None):
        raise ValueError(
            f"{owner}: give exactly one of in_key or in_keys, got in_key={in_key}, in_keys={in_keys}"
        )
    if (out_key is None) == (out_keys is None):
        raise ValueError(
            f"{owner}: give exactly one of out_key or out_keys, got out_key={out_key}, out_keys={out_keys}"
        )
    state_key = _check_key(state_key, "state_key", owner)
    is_init_key = _check_key(is_init_key, "is_init_key", owner)
    if in_keys is None:
        in_keys = [_check_key(in_key, "in_key", owner), state_key]
    else:
        in_keys = _check_key_list(in_keys, "in_keys", owner)
    if out_keys is None:
        out_keys = [_check_key(out_key, "out_key", owner), ("next", *_as_tuple(state_key))]
    else:
        out_keys = _check_key_list(out_keys, "out_keys", owner)

    if len(in_keys) == 3 and not _is_init_like(in_keys[2], is_init_key):
        raise ValueError(
            f"{owner}: in_keys={in_keys} looks like LSTMModule's [value, h, c]; {_SINGLE_STATE}. "
            f"(If {in_keys[2]!r} really is the episode-start marker, also pass is_init_key={in_keys[2]!r}.)"
        )
    if len(in_keys) == 4 and _is_init_like(in_keys[3], is_init_key):
        raise ValueError(
            f"{owner}: in_keys={in_keys} looks like LSTMModule's [value, h, c, is_init]; {_SINGLE_STATE}"
        )
    if len(out_keys) == 3:
        raise ValueError(
            f"{owner}: out_keys={out_keys} looks like LSTMModule's [out, next_h, next_c]; {_SINGLE_STATE}"
        )
    if len(in_keys) == 2:
        in_keys.append(is_init_key)
    if len(in_keys) != 3:
        raise ValueError(f"{owner}: in_keys must be [value, state] or [value, state, is_init], got {in_keys}")
    if len(out_keys) != 2:
        raise ValueError(f"{owner}: out_keys must be [output, ('next', state)], got {out_keys}")
    if len(set(in_keys)) != 3 or out_keys[0] == out_keys[1]:
        raise ValueError(f"{owner}: the keys must be distinct, got in_keys={in_keys}, out_keys={out_keys}")
    return in_keys, out_keys


_RECURRENT_BACKENDS = ("auto", "pad", "scan", "triton")  # LSTMModule's valid values (torchrl 0.14)
_MATMUL_PRECISIONS = ("auto", "fast", "high-prec", "ieee", "tf32", "tf32x3")


def check_lstm_options(
    owner: str,
    *,
    num_layers: int = 1,
    bias: bool = True,
    batch_first: bool = True,
    dropout: float = 0,
    proj_size: int = 0,
    bidirectional: bool = False,
    recurrent_backend: str = "pad",
    recurrent_recompute: str = "none",
    recurrent_matmul_precision: str = "auto",
    lstm: torch.nn.Module | None = None,
    gru: torch.nn.Module | None = None,
) -> None:
    """Validate the ``LSTMModule``/``GRUModule`` keywords an RTRL module accepts as no-ops.

    Each supported value is accepted; each other one raises an error that says why and what to use.
    """
    if lstm is not None or gru is not None:
        raise TypeError(
            f"{owner} cannot wrap an nn.LSTM/nn.GRU (lstm=/gru=): their dense recurrent matrix makes exact "
            "RTRL cost O(N^4) per step. Build the module from sizes instead, e.g. "
            "ELSTMModule(input_size, hidden_size, in_key=..., out_key=...), or wrap any RTRLCore with "
            "RTRLModule(core, ...)"
        )
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"{owner}: num_layers must be a positive int, got {num_layers!r}")
    if num_layers > 1:
        raise ValueError(
            f"{owner} is a single recurrent layer (num_layers=1); got num_layers={num_layers}. For "
            "several layers use rtrl_modules.limits.StackedELSTM (exact multi-layer RTRL, "
            "gradient='rtrl', or layer-wise RTRL 'rtrl_layerwise'), or chain several RTRL "
            "modules in a TensorDictSequential (each layer trained by its own RTRL: the cross-layer "
            "sensitivities are dropped, like StackedELSTM's 'rtrl_layerwise')"
        )
    if not bias:
        raise ValueError(
            f"{owner}: bias=False is not supported: the cells' recurrent biases are part of the "
            "element-wise recurrence trained by RTRL. Keep bias=True (the default)"
        )
    if not batch_first:
        raise ValueError(
            f"{owner}: batch_first=False is not supported: TorchRL modules are batch-first (tensordicts "
            "are [*batch, T] with time as the last batch dimension; LSTMModule rejects it too)"
        )
    if dropout:
        raise ValueError(
            f"{owner}: dropout={dropout!r} is not supported: LSTM dropout acts between stacked layers "
            "and this is a single layer. Put a TensorDictModule(nn.Dropout(p), ...) on the input or "
            "output key instead"
        )
    if proj_size:
        raise ValueError(
            f"{owner}: proj_size={proj_size!r} is not supported: the output is not fed back into the "
            "recurrence, so a projection is just a TensorDictModule(nn.Linear(hidden_size, proj_size)) "
            "on the output key"
        )
    if bidirectional:
        raise ValueError(
            f"{owner}: bidirectional=True is not supported: an acting policy sees one step at a time "
            "and RTRL runs forward in time only (LSTMModule's python_based mode rejects it too)"
        )
    if recurrent_backend not in _RECURRENT_BACKENDS:
        raise ValueError(
            f"{owner}: recurrent_backend must be one of {', '.join(map(repr, _RECURRENT_BACKENDS))} (as "
            f"for LSTMModule; all are no-ops here: RTRL has its own recurrence), got {recurrent_backend!r}"
        )
    if recurrent_recompute != "none":
        raise ValueError(
            f"{owner}: recurrent_recompute={recurrent_recompute!r} is not supported (RTRL modules have no "
            "activation-recompute path); use 'none'"
        )
    if recurrent_matmul_precision not in _MATMUL_PRECISIONS:
        raise ValueError(
            f"{owner}: recurrent_matmul_precision must be one of {', '.join(map(repr, _MATMUL_PRECISIONS))}, "
            f"got {recurrent_matmul_precision!r}"
        )


def _check_dtype(dtype: torch.dtype | None, owner: str) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{owner}: dtype must be a floating-point torch.dtype, got {dtype!r}")


def _build_core(factory, device, dtype, owner: str) -> RTRLCore:
    """Build a core with its parameters created on ``device`` (then cast to ``dtype``)."""
    _check_dtype(dtype, owner)
    if device is None:
        core = factory()
    else:
        with torch.device(device):
            core = factory()
    return core if dtype is None else core.to(dtype=dtype)


class RTRLModule(TensorDictModuleBase):
    """A :class:`~rtrl_modules.core.RTRLCore` as a TorchRL module (LSTMModule/GRUModule semantics).

    * **Step mode** (default; collectors, ``env.rollout``): tensordict [*B] → one step per row.
      Reads ``value`` [*B, D], ``state`` [*B, N] (zeros if absent and every row starts an episode)
      and ``is_init`` [*B, 1]; writes ``out`` [*B, N'] and ``("next", state)`` [*B, N]. Computes no
      sensitivities; gradients, if any, are truncated at the step.
    * **Recurrent mode** (``torchrl.modules.set_recurrent_mode(True)``, as inside every TorchRL
      loss): tensordict [B, T] (or [T], or [..., B, T] flattened), time last. Each row starts from
      the stored state at t = 0 and restarts from the stored state at every ``is_init`` (zeros at a
      real reset); ``("next", state)`` gets LSTMModule's layout. With ``gradient="rtrl"`` or
      ``"rtrl_stepwise"`` and autograd on, a row whose start provably continues (or repeats) a
      segment trained before takes its carried S_0, so ``loss.backward()`` gives exact, untruncated
      RTRL gradients across consecutive segments; any other start gets the stored-state truncated
      gradient, counted in ``segment_starts``/``truncation_causes`` and warned about once per cause
      (:class:`TruncatedGradientWarning`). Rows may come in any order (docs/torchrl.md).

    Args:
        core: the RTRL core to wrap.
        in_key / in_keys, out_key / out_keys: as in ``LSTMModule``; with ``in_key``/``out_key`` the
            state key is ``"recurrent_state"`` and is written to ``("next", "recurrent_state")``.
        gradient: ``"rtrl"`` (default: the core's), ``"rtrl_stepwise"`` or ``"tbptt"``.
        slot_key: optional key of an integer env-slot index [B, T] in the training batch (a hint:
            rows are also found by their start state).
        strict: raise :class:`TruncatedGradientError` instead of warning at a truncated start.
        default_recurrent_mode: recurrent mode outside any ``set_recurrent_mode`` context.
        is_init_key: the episode-start key appended to a two-key ``in_keys`` (default
            ``"is_init"``, as InitTracker writes it); also names a custom third in_key.
        device, dtype: move the core's parameters there (the cell subclasses build them there).

    LSTMModule/GRUModule keywords, so their call sites work unchanged (see :func:`check_lstm_options`):
    ``num_layers=1``, ``bias=True``, ``batch_first=True``, ``dropout=0``, ``proj_size=0``,
    ``bidirectional=False``, ``python_based``, ``recurrent_backend``, ``recurrent_compute_dtype``,
    ``recurrent_recompute="none"``, ``recurrent_matmul_precision`` are accepted (no-ops: the RTRL
    recurrence is its own Python/PyTorch implementation, with no cuDNN, scan or Triton backend); any
    other value, and ``lstm=``/``gru=`` instances, raise an error naming the RTRL alternative.
    """

    DEFAULT_IN_KEYS = [DEFAULT_STATE_KEY]
    DEFAULT_OUT_KEYS = [("next", DEFAULT_STATE_KEY)]

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
        strict: bool = False,
        is_init_key: NestedKey = IS_INIT_KEY,
        device: torch.device | str | int | None = None,
        dtype: torch.dtype | None = None,
        # LSTMModule / GRUModule compatibility (validated, otherwise no-ops)
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0,
        proj_size: int = 0,
        bidirectional: bool = False,
        python_based: bool = False,
        recurrent_backend: str = "pad",
        recurrent_compute_dtype: torch.dtype = torch.float32,
        recurrent_recompute: str = "none",
        recurrent_matmul_precision: str = "auto",
        lstm: torch.nn.Module | None = None,
        gru: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(core, RTRLCore):
            raise TypeError(f"core must be an rtrl_modules RTRLCore, got {type(core).__name__}")
        check_lstm_options(
            owner,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            proj_size=proj_size,
            bidirectional=bidirectional,
            recurrent_backend=recurrent_backend,
            recurrent_recompute=recurrent_recompute,
            recurrent_matmul_precision=recurrent_matmul_precision,
            lstm=lstm,
            gru=gru,
        )
        if device is not None or dtype is not None:
            _check_dtype(dtype, owner)
            core = core.to(device=device, dtype=dtype)
        self.core = core
        if gradient is not None:
            core.gradient = check_gradient_mode(gradient)
        self.in_keys, self.out_keys = resolve_keys(
            in_key, in_keys, out_key, out_keys, owner=owner, is_init_key=is_init_key
        )
        self.python_based = bool(python_based)
        self.recurrent_backend = recurrent_backend
        self.recurrent_compute_dtype = recurrent_compute_dtype
        self.recurrent_recompute = recurrent_recompute
        self.recurrent_matmul_precision = recurrent_matmul_precision
        if slot_key is not None:
            self.in_keys = [*self.in_keys, slot_key]
        self.slot_key = slot_key
        self._recurrent_mode = default_recurrent_mode
        self.strict = strict
        self.carried = CarriedSensitivities()
        # Segment starts seen by gradient-enabled RTRL calls: exact RTRL or truncated (and why).
        self.segment_starts = {"exact": 0, "truncated": 0}
        self.truncation_causes = dict.fromkeys(TRUNCATION_CAUSES, 0)
        self._warned: set[str] = set()
        # The ("next", state) tensors it wrote last, held so that their memory cannot be reused by
        # another tensor (an actor's) that would then pass for one of them.
        self._written: deque[Tensor] = deque(maxlen=4)

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

    @recurrent_mode.setter
    def recurrent_mode(self, value: bool) -> None:
        raise RuntimeError(
            "recurrent_mode cannot be changed in-place (as for LSTMModule): use the "
            "torchrl.modules.set_recurrent_mode context manager, or default_recurrent_mode= at construction"
        )

    @property
    def temporal_mode(self):
        raise RuntimeError("temporal_mode is deprecated (as for LSTMModule), use recurrent_mode instead")

    def set_recurrent_mode(self, mode: bool = True):
        """Removed API (as in LSTMModule since TorchRL 0.8): raises an error naming the replacement."""
        raise RuntimeError(
            f"{type(self).__name__}.set_recurrent_mode() does not exist (LSTMModule.set_recurrent_mode was "
            "removed in TorchRL v0.8): use the torchrl.modules.set_recurrent_mode context manager / "
            "decorator, or default_recurrent_mode= in the constructor"
        )

    def make_python_based(self) -> RTRLModule:
        """No-op returning ``self``: the recurrence is already plain PyTorch (no cuDNN kernel to swap)."""
        return self

    def make_cudnn_based(self) -> RTRLModule:
        """No-op returning ``self``: there is no cuDNN implementation of the element-wise RTRL cells."""
        return self

    @property
    def canonical_keys(self) -> list[NestedKey]:
        """Keys whose memory layout matters for this module: ``in_keys + out_keys``."""
        return [*self.in_keys, *self.out_keys]

    def canonicalize(self, data: TensorDictBase, *, inplace: bool = False) -> TensorDictBase:
        """Make the entries of :attr:`canonical_keys` that ``data`` holds contiguous (as LSTMModule)."""
        present = data.keys(include_nested=True)
        keys = [key for key in self.canonical_keys if key in present]
        if not keys:
            return data
        out = data if inplace else data.copy()
        for key in keys:
            out.set(key, data.get(key).contiguous())
        return out

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
        """``TensorDictPrimer`` declaring the cell state (zeros at reset); no sensitivities.

        As LSTMModule's: one ``Unbounded`` spec per state key with ``expand_specs=True`` (the env's
        batch size is prepended), no device (the primer follows the env's device), and
        ``get_primers_from_module`` finds it. Intended differences: the spec shape is
        ``[hidden_size]``, not ``[num_layers, hidden_size]`` (one layer, state stored [*B, N]), and
        its dtype is the parameters' (a float64 module gets a float64 state; LSTMModule's is float32).
        """
        from torchrl.data import Unbounded
        from torchrl.envs import TensorDictPrimer

        if _as_tuple(self.out_keys[1]) != ("next", *_as_tuple(self.state_key)):
            raise RuntimeError(
                "make_tensordict_primer needs out_keys[1] == ('next', *in_keys[1]) so that the env moves the "
                f"state from step to step; got in_keys={self.in_keys}, out_keys={self.out_keys}"
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

    def offer_sensitivities(self, slots: Tensor, c0: Tensor, sensitivities: TensorDict) -> None:
        """Sensitivities computed elsewhere (actor-carried RTRL): the segment of env slot ``slots[b]``
        that starts at state ``c0[b]`` ([B], [B, N]) starts from S_0 = ``sensitivities[b]``
        ([B, *parameter shape] by name). The next gradient-enabled call whose row starts there (bit for
        bit) uses it exactly like a segment end carried here."""
        self.carried.offer(slots, c0.detach(), sensitivities.detach(), self.core.sensitivity_shapes())

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
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.recurrent_mode:
            return self._forward_recurrent(tensordict)
        return self._forward_step(tensordict)

    def _forward_step(self, tensordict: TensorDictBase) -> TensorDictBase:
        """One step per row (acting): [*B] → state zeroed where ``is_init``, no sensitivities.

        Branch-free on data (only shapes, dtypes and key presence are inspected), so an acting policy
        compiles with ``torch.compile(fullgraph=True)`` and exports with ``torch.export``; the checks
        that read values (a missing state while rows continue an episode, finite inputs) run eagerly
        and are skipped while tracing (see :meth:`_stored_states` and ``core.checks.check_input``).
        """
        shape = tensordict.shape
        shaped = tensordict.reshape(-1).unsqueeze(-1)
        value, is_init = self._read_inputs(shaped)
        c0 = self._stored_states(shaped, is_init, value)[:, 0]
        c0 = torch.where(is_init[:, :1], torch.zeros_like(c0), c0)
        out, new_state = self.core(value, TensorDict({STATE_KEY: c0}, [c0.shape[0]]), is_init, "tbptt")
        shaped.set(self.out_keys[0], out)
        shaped.set(self.out_keys[1], new_state[STATE_KEY].unsqueeze(1))
        tensordict.update(shaped.reshape(shape))
        return tensordict

    def _forward_recurrent(self, tensordict: TensorDictBase) -> TensorDictBase:
        """A segment per row: [B, T] (or [T], or [..., B, T]), time last, restarting from the stored
        state at every ``is_init`` (TorchRL's recurrent-mode contract)."""
        if tensordict.ndim == 0:
            raise ValueError(
                f"{type(self).__name__} in recurrent mode needs a tensordict with a time dimension "
                "(last batch dim), got a 0-d tensordict"
            )
        shape = tensordict.shape
        shaped = {1: tensordict.unsqueeze(0), 2: tensordict}.get(tensordict.ndim)
        if shaped is None:
            shaped = tensordict.flatten(0, -2)
        value, is_init = self._read_inputs(shaped)
        stored = self._stored_states(shaped, is_init, value)
        dtype = self.core.cell.weight_ih.dtype  # the carried store and the restarts are in this dtype
        if stored.dtype != dtype:
            raise TypeError(
                f"{type(self).__name__}: state {self.state_key!r} is {stored.dtype} but the module's "
                f"parameters are {dtype}; make the primer after casting the module (module.double() "
                "before make_tensordict_primer()), or cast the batch"
            )
        # The actor's ("next", state), read before it is overwritten below: its last step identifies the
        # next segment. States this module wrote itself (an earlier call on the same batch) are not
        # the actor's and are ignored.
        collected = shaped.get(self.out_keys[1], None)
        if collected is not None and any(
            collected.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in self._written
        ):
            collected = None
        out, states = self._run_segment(shaped, value, stored, is_init, collected)
        shaped.set(self.out_keys[0], out)
        # LSTMModule's layout: each trajectory's final state at its last step, zeros elsewhere (what
        # BurnInTransform and next-state value reads expect: the state recomputed with current weights).
        last = torch.ones_like(is_init)
        last[:, :-1] = is_init[:, 1:]
        next_states = states.detach() * last.unsqueeze(-1).to(states.dtype)
        self._written.append(next_states)
        shaped.set(self.out_keys[1], next_states)
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

    def _stored_states(self, td: TensorDictBase, is_init: Tensor, value: Tensor) -> Tensor:
        """The stored state at every step [B, T, N]; zeros, like LSTMModule, when it is absent and every
        row starts an episode (checking that reads the data, so traced graphs skip it)."""
        state = td.get(self.state_key, None)
        if state is None:
            if torch.compiler.is_compiling() or bool(is_init[:, 0].all()):
                return value.new_zeros(*value.shape[:2], self.hidden_size)
            raise KeyError(
                f"{type(self).__name__}: the recurrent state {self.state_key!r} is missing from the "
                "tensordict while some rows continue an episode, so the state was dropped between steps "
                f"(the env moves out_keys[1]={self.out_keys[1]!r} to {self.state_key!r}). Add the primer: "
                "env.append_transform(module.make_tensordict_primer()) (or "
                "torchrl.modules.utils.get_primers_from_module(policy)), or pass "
                "auto_register_policy_transforms=True to the Collector."
            )
        if state.shape != (*value.shape[:2], self.hidden_size):
            raise ValueError(
                f"{type(self).__name__}: state {self.state_key!r} has shape {tuple(state.shape)}, "
                f"expected {[*value.shape[:2], self.hidden_size]}"
            )
        return state

    def _run_segment(
        self, td: TensorDictBase, value: Tensor, stored: Tensor, is_init: Tensor, collected: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Run the core over the rows; with autograd on in the RTRL modes, take S_0 from the carried
        store where the segment provably continues (or repeats) a carried one, else truncate."""
        gradient = self.core.gradient
        marks_restart = is_init & (stored != 0).any(-1)  # is_init on a non-zero stored state
        restart = stored if bool(marks_restart.any()) else None
        c0 = stored[:, 0]
        carry = (
            torch.is_grad_enabled()
            and gradient != "tbptt"
            and any(p.requires_grad for p in self.core.parameters())
        )
        if not carry:  # no gradient reaches the recurrent parameters: S_0 is not needed
            out, _, states = self.core(
                value, TensorDict({STATE_KEY: c0}, [c0.shape[0]]), is_init, "tbptt",
                track_sensitivities=False, restart_state=restart, return_states=True,
            )  # fmt: skip
            return out, states

        marks_episode = is_init & ~marks_restart
        tail = self._tails(is_init, marks_restart)
        end_c = None if collected is None else collected[:, -1]
        hints, named_slots = self._hints(td, c0)
        plan = self.carried.resolve(
            hints, c0, end_c, marks_episode[:, 0], marks_restart[:, 0], tail,
            self.core.sensitivity_shapes(), named_slots,
        )  # fmt: skip
        later_episodes, later_restarts = int(marks_episode[:, 1:].sum()), int(marks_restart[:, 1:].sum())
        self._report(plan.causes, later_episodes, later_restarts, c0.shape[0])
        state = TensorDict({STATE_KEY: c0}, batch_size=[c0.shape[0]])
        if plan.sensitivities is not None:
            state[SENSITIVITY_KEY] = plan.sensitivities
        elif not bool(is_init[:, 0].all()):  # truncated rows start from S_0 = 0
            state[SENSITIVITY_KEY] = self.core.initial_state(c0.shape[0], dtype=c0.dtype)[SENSITIVITY_KEY]
        try:
            out, new_state, states = self.core(
                value, state, is_init, gradient, track_sensitivities=True,
                sensitivity_out=plan.out if gradient == "rtrl" else None, restart_state=restart,
                return_states=True,
            )  # fmt: skip
            if plan.bank is not None and states.grad_fn is not None:
                self.carried.pin(states.grad_fn, plan.sensitivities)
            ended = td.get(("next", "done"), None)
            ended = None if ended is None else ended.reshape(*c0.shape[:1], -1, 1)[:, -1, 0]
            exact_end = end_c is not None
            end_c = states[:, -1].detach() if end_c is None else end_c
            self.carried.commit(plan, new_state[SENSITIVITY_KEY], c0, end_c, exact_end, ended)
        except BaseException:
            self.carried.reset()  # a half-written store must not be trusted
            raise
        return out, states

    @staticmethod
    def _tails(is_init: Tensor, marks_restart: Tensor) -> Tensor:
        """[B] long: the row's last ``is_init`` after t = 0 is none (0), an episode start (1) or a
        truncated restart (2)."""
        steps = torch.arange(is_init.shape[1], device=is_init.device)
        last = (is_init * steps).amax(-1)  # 0 when no is_init after t = 0
        restart = marks_restart.gather(1, last.unsqueeze(1)).squeeze(1).long()
        return torch.where(last > 0, 1 + restart, 0)

    def _hints(self, td: TensorDictBase, c0: Tensor) -> tuple[Tensor, bool]:
        """Each row's own slot, and whether the batch names it: ``td[slot_key][:, 0]`` (True) or the
        row index (False)."""
        batch = c0.shape[0]
        if self.slot_key is None or self.slot_key not in td.keys(include_nested=True):
            return torch.arange(batch, device=c0.device), False
        slots = td.get(self.slot_key).reshape(batch, -1)[:, 0].long().to(c0.device)
        if bool((slots < 0).any()):
            raise ValueError(f"{type(self).__name__}: {self.slot_key!r} holds negative env slots")
        if slots.unique().numel() != batch:
            raise ValueError(
                f"{type(self).__name__}: two rows of the batch name the same env slot in "
                f"{self.slot_key!r}; each row must be a different env's segment"
            )
        return slots, True

    def _report(self, causes: list[str], episodes: int, restarts: int, rows: int) -> None:
        """Count segment starts (t = 0 of each row, and the ``episodes`` and ``restarts`` marked by
        ``is_init`` after t = 0); warn once per cause, or raise under ``strict``."""
        truncated = list(causes) + ["restart"] * restarts
        self.segment_starts["exact"] += rows - len(causes) + episodes
        self.segment_starts["truncated"] += len(truncated)
        for cause in truncated:
            self.truncation_causes[cause] += 1
        for cause in dict.fromkeys(truncated):
            message = (
                f"{type(self).__name__}: {truncated.count(cause)} segment start(s) got the stored-state "
                f"truncated gradient, not exact RTRL, because {TRUNCATION_CAUSES[cause]}. See "
                "docs/torchrl.md for how to get exact RTRL; counts are in module.segment_starts."
            )
            if self.strict:
                raise TruncatedGradientError(message + " (strict=True)")
            if cause not in self._warned:
                self._warned.add(cause)
                warnings.warn(message, TruncatedGradientWarning, stacklevel=4)

    def extra_repr(self) -> str:
        return f"in_keys={self.in_keys}, out_keys={self.out_keys}, gradient={self.gradient!r}"


def segment_start_counts(module: torch.nn.Module) -> dict[str, int]:
    """Segment starts seen by every :class:`RTRLModule` inside ``module``: ``{"exact", "truncated"}``
    and the truncations by cause (``truncated_<cause>``); empty if it holds none (baselines)."""
    counts: dict[str, int] = {}
    found = {id(m): m for m in module.modules()}
    for owner in list(found.values()):  # TorchRL losses keep their networks outside _modules
        for value in vars(owner).values():
            if isinstance(value, torch.nn.Module):
                found.update({id(m): m for m in value.modules()})
    for sub in found.values():
        if isinstance(sub, RTRLModule):
            items = [*sub.segment_starts.items()]
            items += [(f"truncated_{cause}", n) for cause, n in sub.truncation_causes.items()]
            for key, value in items:
                counts[key] = counts.get(key, 0) + value
    return counts


class ELSTMModule(RTRLModule):
    """eLSTM (Irie et al., 2024) as a TorchRL module; ``out`` = σ(O[x; c] + b) ⊙ c [*, hidden_size].

    ``forget_bias`` sets the initial b_f and ``init`` the initialisation (``"default"`` or
    ``"official"``; see :class:`~rtrl_modules.cells.ELSTMCell`); ``device`` / ``dtype`` build the
    parameters there; other keyword arguments go to :class:`RTRLModule` (keys, ``slot_key``,
    ``default_recurrent_mode``, LSTMModule's keywords, ...).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_gate: bool = True,
        gradient: str = "rtrl",
        forget_bias: float | None = None,
        *,
        init: str = "default",
        device: torch.device | str | int | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> None:
        core = _build_core(
            lambda: ELSTM(
                input_size,
                hidden_size,
                output_gate=output_gate,
                gradient=gradient,
                forget_bias=forget_bias,
                init=init,
            ),
            device,
            dtype,
            type(self).__name__,
        )
        super().__init__(core, **kwargs)


class _CellModule(RTRLModule):
    """A module whose core is built from ``(input_size, hidden_size, gradient)`` alone."""

    core_class: type[RTRLCore]

    def __init__(
        self, input_size: int, hidden_size: int, gradient: str = "rtrl", *, device=None, dtype=None, **kwargs
    ) -> None:
        build = self.core_class
        core = _build_core(
            lambda: build(input_size, hidden_size, gradient=gradient), device, dtype, type(self).__name__
        )
        super().__init__(core, **kwargs)


class IndRNNModule(_CellModule):
    """IndRNN core as a TorchRL module; ``out`` = c [*, hidden_size]. Keywords as :class:`ELSTMModule`."""

    core_class = IndRNN


class LRUModule(_CellModule):
    """Real diagonal linear recurrent unit as a TorchRL module; ``out`` = c [*, hidden_size]."""

    core_class = LRU


class SRUModule(_CellModule):
    """SRU-style core as a TorchRL module; ``out`` = c [*, hidden_size]."""

    core_class = SRU


__all__ = [
    "GRADIENT_MODES",
    "segment_start_counts",
    "TruncatedGradientWarning",
    "TruncatedGradientError",
    "RTRLModule",
    "ELSTMModule",
    "IndRNNModule",
    "LRUModule",
    "SRUModule",
]
