"""Learner-side carrying of RTRL sensitivities between consecutive training segments.

Rollouts never hold sensitivities (DESIGN §3.1): only the cell state ``c`` travels through the
collector (primer, root and ``("next", ...)`` keys). The sensitivities S_0 needed at the start of
a training segment live here, one row per **environment slot** (row ``b`` of the collector's
``[num_envs, T]`` batch, or the value of an optional slot key), O(slots · N · D) in total.

Which segment is which is told by the actor's cell state at the segment start, ``c0`` (the root
state key at t = 0, copied verbatim by the collector from the previous segment's last
``("next", state)``): a call whose ``c0`` equals the one seen before for that slot is the *same*
segment again (a second loss term, a critic call, another PPO epoch) and reuses the same S_0; any
other ``c0`` is the *next* segment and starts from the S_T left by the latest call on the previous
one. Rows whose segment starts an episode (``is_init`` at t = 0) need no S_0 at all.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor


class CarriedSensitivities:
    """Sensitivities carried per environment slot by the learner (synchronous collection).

    Holds, per slot ``s``: ``start[s]`` (S_0 of the segment being trained on), ``start_c[s]`` (the
    actor's ``c0`` of that segment, its fingerprint) and ``end[s]`` (S_T after the latest call on
    it). All tensors are [slots, ...]; nothing grows with the segment length or episode length.
    """

    def __init__(self) -> None:
        self.start: TensorDict | None = None
        self.end: TensorDict | None = None
        self.start_c: Tensor | None = None
        self.has_start: Tensor | None = None
        self.has_end: Tensor | None = None

    # ------------------------------------------------------------------ public API
    @property
    def num_slots(self) -> int:
        return 0 if self.start is None else self.start.batch_size[0]

    def reset(self, slots: Tensor | list[int] | None = None) -> None:
        """Forget everything (``slots=None``) or only the given slots (their next segment must then
        start an episode, or :meth:`load` must restore them)."""
        if slots is None or self.start is None:
            self.__init__()
            return
        idx = torch.as_tensor(slots, dtype=torch.long, device=self.has_start.device)
        self.has_start[idx] = False
        self.has_end[idx] = False

    def state(self) -> TensorDict | None:
        """A detached copy for checkpoints: ``start``/``end`` sensitivities, ``start_c`` and flags."""
        if self.start is None:
            return None
        return TensorDict(
            {
                "start": self.start,
                "end": self.end,
                "start_c": self.start_c,
                "has_start": self.has_start,
                "has_end": self.has_end,
            },
            batch_size=[self.num_slots],
        ).clone()

    def load(self, state: TensorDict | None) -> None:
        """Restore what :meth:`state` returned (``None`` = reset)."""
        if state is None:
            self.reset()
            return
        for key in ("start", "end", "start_c", "has_start", "has_end"):
            if key not in state.keys():
                raise KeyError(f"carried-sensitivity state has no {key!r} entry; got {list(state.keys())}")
        state = state.clone()
        self.start, self.end = state["start"], state["end"]
        self.start_c, self.has_start, self.has_end = state["start_c"], state["has_start"], state["has_end"]

    def nbytes(self) -> int:
        """Bytes held (all slots)."""
        if self.start is None:
            return 0
        state = self.state()
        return sum(t.numel() * t.element_size() for t in state.values(include_nested=True, leaves_only=True))

    # ------------------------------------------------------------------ used by the modules
    def _allocate(self, num_slots: int, shapes: dict[str, torch.Size], hidden: int, like: Tensor) -> None:
        zeros = {name: like.new_zeros(num_slots, *shape) for name, shape in shapes.items()}
        self.start = TensorDict(zeros, batch_size=[num_slots])
        self.end = self.start.clone()
        self.start_c = like.new_zeros(num_slots, hidden)
        self.has_start = torch.zeros(num_slots, dtype=torch.bool, device=like.device)
        self.has_end = torch.zeros(num_slots, dtype=torch.bool, device=like.device)

    def fetch(
        self, slots: Tensor, c0: Tensor, starts_episode: Tensor, shapes: dict[str, torch.Size], num_slots: int
    ) -> TensorDict:
        """S_0 [B, ...] for rows with env slots ``slots`` [B] and actor states ``c0`` [B, N].

        Advances a slot to its next segment when ``c0`` differs from the recorded one.
        """
        if self.start is None:
            self._allocate(num_slots, shapes, c0.shape[-1], c0)
        elif num_slots > self.num_slots:
            raise ValueError(
                f"the batch addresses env slot {num_slots - 1} but the carried sensitivities hold "
                f"{self.num_slots} slots; call reset_sensitivities() when the number of envs changes"
            )
        if self.start_c.dtype != c0.dtype or self.start_c.shape[-1] != c0.shape[-1]:
            raise ValueError(
                "carried sensitivities were made for states "
                f"{tuple(self.start_c.shape[1:])} {self.start_c.dtype}, got {tuple(c0.shape[1:])} "
                f"{c0.dtype}; call reset_sensitivities()"
            )
        same = self.has_start[slots] & (self.start_c[slots] == c0).all(-1)
        advance = ~same & ~starts_episode
        missing = advance & ~self.has_end[slots]
        if bool(missing.any()):
            bad = slots[missing].tolist()
            raise RuntimeError(
                f"no carried RTRL sensitivities for env slot(s) {bad[:8]}: their segment does not start an "
                "episode (is_init[:, 0] is False) and no earlier segment of the same env was trained on. "
                "Feed each env's segments in order from an episode start, restore them with "
                "set_sensitivities(), or use gradient='tbptt'."
            )
        # Move to the next segment: S_0 ← S_T of the previous one; record the new fingerprint.
        full = self.is_full(slots)
        if full and bool((~same).all()):
            # Every env moves on: swap the two buffers instead of copying (rows that start an
            # episode ignore S_0, so their stale contents do not matter).
            self.start, self.end = self.end, self.start
        elif bool(advance.any()):  # (an empty index assignment would still bump S_0's version)
            moved = slots[advance]
            self.start[moved] = self.end[moved]
        fresh = slots[~same]
        self.start_c[fresh] = c0[~same]
        self.has_start[fresh] = True
        return self.start if full else self.start[slots]

    def is_full(self, slots: Tensor) -> bool:
        """Whether ``slots`` is every slot in order (the usual [num_envs, T] batch)."""
        return slots.numel() == self.num_slots and bool(
            (slots == torch.arange(self.num_slots, device=slots.device)).all()
        )

    def end_buffer(self, slots: Tensor) -> TensorDict | None:
        """Where the core may write S_T directly for a full batch (no copy in :meth:`store`)."""
        return self.end if self.start is not None and self.is_full(slots) else None

    def store(self, slots: Tensor, sens_end: TensorDict) -> None:
        """Record S_T [B, ...] of the latest call for these slots (the weight sensitivity may
        already be in place, written there by the core through :meth:`end_buffer`)."""
        if self.is_full(slots):
            for name, value in sens_end.items():
                if value.data_ptr() != self.end[name].data_ptr():
                    self.end[name].copy_(value)
        else:
            self.end[slots] = sens_end
        self.has_end[slots] = True
