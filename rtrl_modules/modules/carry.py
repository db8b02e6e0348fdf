"""Learner-side carrying of RTRL sensitivities between training segments, by segment identity.

Rollouts never hold sensitivities: only the cell state ``c`` travels through the collector (primer,
root and ``("next", ...)`` keys). The sensitivities S_0 needed at the start of a training segment
live here, one entry per **slot** (an environment's chain of segments), O(slots · Σ|θ|) in total.

A carried S is used only where the segment provably belongs to the slot. The proof is the actor's
cell state, which collectors copy verbatim from one step (and one batch) to the next:

* **continue**: the segment's start state ``c0`` equals, bit for bit, the state the actor wrote at the
  end of the slot's latest segment (its last ``("next", state)``): S_0 is that segment's S_T;
* **repeat**: ``c0`` equals the start state of the slot's latest segment (a critic call, another
  loss term, a PPO epoch, a shifted view of the same start): S_0 is that segment's S_0;
* **episode**: ``is_init`` at t = 0 with a zero stored state (the primer's reset): S_0 = 0, exactly.

Any other start (a replay slice, a sampler's ``is_init`` marker on a mid-episode state, a view that
starts one step later, rows of an unknown env) gets S_0 = 0: the stored-state truncated gradient,
reported as such by the module. Only segments whose last chunk is exact store their S_T, so the store
is never fed a truncated sensitivity. Rows may come in any order: a start that matches no state of
its own slot is looked up among all slots.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torch import Tensor

# Causes of a truncated segment start (the words the module's warning and counters use).
TRUNCATION_CAUSES = {
    "restart": "is_init marks a step whose stored state is not zero (a replay slice start, a shifted "
    "view, or a sampler marker inside an episode): the state restarts from the stored state and the "
    "gradient is truncated there, as for LSTMModule",
    "unknown": "the segment's start state matches no carried segment end (rows of unknown envs, rows "
    "reordered without a matching history, replayed or shifted segments, or segments fed out of order)",
    "ambiguous": "the segment's start state matches the carried segments of several slots",
}
_STATE_FIELDS = (
    "start", "end", "start_c", "end_c", "has_start", "has_end", "end_exact", "start_episode", "free",
    "last_used",
)  # fmt: skip
# Tolerance (in units of the dtype's epsilon) for matching a start state against a segment end that the
# learner recomputed (batches without the actor's ("next", state), e.g. after a loss's key selection).
_RECOMPUTED_TOLERANCE = 1000


def _matches(ends: Tensor, exact: Tensor, c0: Tensor) -> Tensor:
    """[S] or [B]: ``c0`` equals the end bit for bit (actor's end) or within rounding (recomputed end)."""
    equal = (ends == c0).all(-1)
    tol = _RECOMPUTED_TOLERANCE * torch.finfo(ends.dtype).eps
    close = ((ends - c0).abs() <= tol * (1 + ends.abs())).all(-1)
    return torch.where(exact, equal, close)


@dataclass
class Plan:
    """What :meth:`CarriedSensitivities.resolve` decided for a call's rows [B]."""

    read: Tensor  # [B] long: slot whose S_0 the row uses (-1: none, S_0 = 0)
    read_end: Tensor  # [B] bool: that S_0 is the slot's end (continue), else its start (repeat)
    write: Tensor  # [B] long: slot that records the row's S_T (-1: none)
    advance: Tensor  # [B] bool: the row is the written slot's next segment (start <- its S_0)
    causes: list[str]  # cause of each truncated t = 0 start
    sensitivities: TensorDict | None  # S_0 [B, ...] for the core, None when no row needs one
    bank: TensorDict | None = None  # whole-store fast path: the bank that receives S_T [slots, ...]
    swap: bool = False  # fast path: every row moved on, the S_0 bank becomes the start bank
    # Episode-start rows that may repeat their own slot's segment, to be decided once the end state is
    # known (batches without ("next", state)): [B] bool, and each row's own slot.
    pending: Tensor | None = None
    hints: Tensor | None = None

    @property
    def out(self) -> Tensor | None:
        """Buffer the core writes S_T of ``weight_ih`` into (fast path), else None."""
        return None if self.bank is None else self.bank["weight_ih"]


class _Pin:
    """Marks a store bank as read by a pending backward (released when it runs or the graph dies)."""

    def __init__(self, node, data_ptr: int) -> None:
        self.node = weakref.ref(node)
        self.data_ptr = data_ptr
        self.done = False
        node.register_hook(self._release)

    def _release(self, *_):
        self.done = True

    @property
    def active(self) -> bool:
        return not self.done and self.node() is not None


class CarriedSensitivities:
    """Sensitivities carried per slot by the learner.

    Per slot ``s``: ``start[s]`` (S_0 of its latest segment) and ``start_c[s]`` (that segment's start
    state), ``end[s]`` (S_T after the latest call on it) and ``end_c[s]`` (the actor's state at the
    segment's end: the next segment's start), ``start_episode[s]`` (the segment started an episode,
    S_0 = 0), ``free[s]`` (the segment ended its episode, or the batch had no done flags: a new
    episode may take the slot) and ``last_used[s]`` (call counter, for eviction). Tensors are
    [slots, ...]; nothing grows with segment or episode length.
    """

    def __init__(self) -> None:
        self.start: TensorDict | None = None
        self.end: TensorDict | None = None
        self.start_c: Tensor | None = None
        self.end_c: Tensor | None = None
        self.has_start: Tensor | None = None
        self.has_end: Tensor | None = None
        self.end_exact: Tensor | None = None
        self.start_episode: Tensor | None = None
        self.free: Tensor | None = None
        self.last_used: Tensor | None = None
        self.calls = 0
        self.max_rows = 0
        self._pins: list[_Pin] = []

    # ------------------------------------------------------------------ public API
    @property
    def num_slots(self) -> int:
        return 0 if self.start is None else self.start.batch_size[0]

    def reset(self, slots: Tensor | list[int] | None = None) -> None:
        """Forget everything (``slots=None``) or only the given slots."""
        if slots is None or self.start is None:
            self.__init__()
            return
        idx = torch.as_tensor(slots, dtype=torch.long, device=self.has_start.device)
        idx = idx[idx < self.num_slots]  # slots the store never had hold nothing to forget
        self.has_start[idx] = False
        self.has_end[idx] = False
        self.free[idx] = True

    def state(self) -> TensorDict | None:
        """A detached copy for checkpoints (every per-slot field)."""
        if self.start is None:
            return None
        return TensorDict(
            {name: getattr(self, name) for name in _STATE_FIELDS}, batch_size=[self.num_slots]
        ).clone()

    def load(self, state: TensorDict | None) -> None:
        """Restore what :meth:`state` returned (``None`` = reset)."""
        self.reset()
        if state is None:
            return
        missing = [key for key in _STATE_FIELDS if key not in state.keys()]
        if missing:
            raise KeyError(
                f"carried-sensitivity state has no {missing} entries (saved by an older version?); "
                f"got {sorted(state.keys())}; call reset_sensitivities() to start without them"
            )
        state = state.clone()
        for name in _STATE_FIELDS:
            setattr(self, name, state[name])
        self.max_rows = self.num_slots

    def offer(
        self, slots: Tensor, end_c: Tensor, sensitivities: TensorDict, shapes: dict[str, torch.Size]
    ) -> None:
        """Sensitivities computed elsewhere (e.g. by the actors): for each env slot in ``slots`` [B],
        record a segment that ended at ``end_c`` [B, N] with S_T = ``sensitivities`` [B, ...]. A later
        row that starts at ``end_c`` (bit for bit) in that slot continues it exactly from them."""
        slots = torch.as_tensor(slots, dtype=torch.long, device=end_c.device)
        if slots.numel() == 0:
            return
        needed = int(slots.max()) + 1
        if self.start is None:
            self._allocate(needed, shapes, end_c.shape[-1], end_c)
        elif needed > self.num_slots:
            self._grow(needed - self.num_slots)
        self._check_compatible(end_c, shapes)
        if self._pinned(self.end):
            self.end = self.end.clone()
        self.end[slots] = sensitivities.to(end_c.dtype)
        self.end_c[slots] = end_c
        self.end_exact[slots] = True
        self.has_end[slots] = True
        self.has_start[slots] = False
        self.start_episode[slots] = False
        self.free[slots] = False
        self.max_rows = max(self.max_rows, slots.numel())

    def nbytes(self) -> int:
        """Bytes held (all slots)."""
        if self.start is None:
            return 0
        return sum(
            t.numel() * t.element_size()
            for t in self.state().values(include_nested=True, leaves_only=True)
        )

    # ------------------------------------------------------------------ used by the modules
    def resolve(
        self,
        hints: Tensor,
        c0: Tensor,
        end_c: Tensor | None,
        starts_episode: Tensor,
        restarts: Tensor,
        tail: Tensor,
        shapes: dict[str, torch.Size],
        named_slots: bool = False,
    ) -> Plan:
        """Decide S_0 and where S_T goes for each row of a gradient-enabled call.

        Args:
            hints: [B] long, each row's own slot (its row index, or the batch's slot key).
            named_slots: the hints name each row's env slot (a slot key), so a row that starts an
                episode restarts its env's chain in its own slot; with row-index hints (rows may be
                reordered) it first looks for the same segment trained before in another slot.
            c0: [B, N] the stored (actor) state at t = 0; end_c: [B, N] the actor's state at the end
                (None when the batch does not hold it).
            starts_episode: [B] bool, ``is_init`` at t = 0 with a zero state.
            restarts: [B] bool, ``is_init`` at t = 0 with a non-zero state (a truncated restart).
            tail: [B] long, the row's last ``is_init`` after t = 0: 0 none, 1 an episode start (S_T
                is exact whatever S_0 was), 2 a truncated restart (S_T is not exact).
            shapes: per-example sensitivity shape of each parameter.
        """
        batch, hidden = c0.shape
        self.calls += 1
        self.max_rows = max(self.max_rows, batch)
        if self.start is None:
            self._allocate(batch, shapes, hidden, c0)
        self._check_compatible(c0, shapes)

        # A hint beyond the store (a new env, or the extra rows of a stacked call such as unshifted
        # GAE's next-state half) has no own slot; such rows are looked up or claim one if they must.
        own = hints < self.num_slots
        h = torch.where(own, hints, 0)
        keeps_tail = tail != 2  # S_T is exact if the t = 0 start is
        same_start = own & self.has_start[h] & (self.start_c[h] == c0).all(-1)
        if end_c is None:  # the batch has no ("next", state): the end is known only after the call
            same_end = torch.zeros_like(same_start)
        else:
            same_end = own & self.has_end[h] & (self.end_c[h] == end_c).all(-1)
        middle = ~starts_episode & ~restarts
        cont = own & middle & self.has_end[h] & _matches(self.end_c[h], self.end_exact[h], c0)
        rep = middle & ~cont & same_start & ~self.start_episode[h]
        rep_episode = starts_episode & self.start_episode[h] & same_start & same_end
        pending = None
        if end_c is None and not named_slots:
            # The same episode start again, or another one: told by the end, in commit.
            pending = starts_episode & keeps_tail

        read = torch.where(cont | rep, h, -1)
        read_end = cont.clone()
        write = torch.where(keeps_tail & (cont | (rep & same_end) | rep_episode), h, -1)
        advance = cont & keeps_tail
        causes: list[str] = []
        claims: list[int] = []  # rows that start a new chain in some free slot

        unresolved = ~(cont | rep | rep_episode) if pending is None else ~(cont | rep | pending)
        if bool(unresolved.any()):
            for b in unresolved.nonzero().flatten().tolist():
                if bool(starts_episode[b]):
                    if bool(keeps_tail[b]):
                        claims.append(b)
                    continue
                if not bool(restarts[b]):
                    slot, is_cont = self._search(c0[b])
                    if slot >= 0:
                        read[b], read_end[b] = slot, is_cont
                        # The slot's segment itself (continued, or repeated with the same end)?
                        same = is_cont or (
                            end_c is not None
                            and bool(self.has_end[slot] & (self.end_c[slot] == end_c[b]).all())
                        )
                        if bool(keeps_tail[b]) and same:
                            write[b], advance[b] = slot, is_cont
                        continue
                    causes.append("ambiguous" if slot == -2 else "unknown")
                else:
                    causes.append("restart")
                if int(tail[b]) == 1:  # truncated at t = 0, but a new episode starts later in the row
                    claims.append(b)
        for b in claims:
            used = set(write[write >= 0].tolist()) | set(read[read >= 0].tolist())
            if named_slots and int(hints[b]) not in used:  # the env's own slot: its chain restarts there
                write[b] = self._claim(int(hints[b]), used, own=True)
                continue
            # The same episode-start segment trained before (in another slot: rows were reordered)?
            same = -1 if end_c is None or not bool(starts_episode[b]) else self._find_episode(end_c[b], True)
            if same >= 0:
                write[b] = same
                continue
            write[b] = self._claim(int(hints[b]), used)

        touched = torch.cat((read[read >= 0], write[write >= 0]))
        self.last_used[touched] = self.calls
        plan = self._prepare(hints, read, read_end, write, advance, causes, starts_episode)
        if pending is not None and bool(pending.any()):
            plan.pending, plan.hints = pending, hints
        return plan

    def _prepare(self, h, read, read_end, write, advance, causes, starts_episode) -> Plan:
        """S_0 for the core: a whole bank as it is (the usual in-order batch) or gathered rows."""
        plan = Plan(read, read_end, write, advance, causes, None)
        in_order = h.numel() == self.num_slots and bool(
            (h == torch.arange(self.num_slots, device=h.device)).all()
        )
        if in_order and bool((write == h).all()):
            if bool((advance | starts_episode).all()):
                # Every env moves on to its next segment: S_0 is the end bank, S_T goes into the
                # start bank, and commit swaps their roles (no copy).
                plan.sensitivities, plan.bank, plan.swap = self.end, self.start, True
            elif not bool(read_end.any()) and bool(((read == h) | starts_episode).all()):
                # The same segments again (second loss term, PPO epoch).
                plan.sensitivities, plan.bank = self.start, self.end
            if plan.bank is not None:
                if self._pinned(plan.bank):  # a pending backward still reads it: write elsewhere
                    plan.bank = plan.bank.apply(torch.empty_like)
                return plan
        rows = (read >= 0).nonzero().flatten()
        if rows.numel() == 0:
            return plan
        slots = read[rows]
        sens = self.start[slots]
        from_end = read_end[rows]
        if bool(from_end.any()):
            sens[from_end] = self.end[slots[from_end]]
        s0 = TensorDict(
            {name: value.new_zeros(h.numel(), *value.shape[1:]) for name, value in sens.items()},
            batch_size=[h.numel()],
        )
        s0[rows] = sens
        plan.sensitivities = s0
        return plan

    def commit(
        self,
        plan: Plan,
        sens_end: TensorDict,
        c0: Tensor,
        end_c: Tensor,
        exact_end: bool,
        ended: Tensor | None,
    ) -> None:
        """Record S_T [B, ...] for the rows the plan writes (and move advanced slots on). ``end_c`` is
        the actor's end state (``exact_end``) or the learner's recomputation of it."""
        if plan.pending is not None:
            for b in plan.pending.nonzero().flatten().tolist():
                own = int(plan.hints[b])
                if self._find_episode(end_c[b], False) < 0:
                    # Another episode start (not the same segment again, which keeps what it has).
                    used = set(plan.write[plan.write >= 0].tolist()) | set(plan.read[plan.read >= 0].tolist())
                    plan.write[b] = self._claim(own, used)
        rows = (plan.write >= 0).nonzero().flatten()
        if plan.bank is not None:  # whole-store fast path: S_T of weight_ih is already in the bank
            for name, value in sens_end.items():
                if value.data_ptr() != plan.bank[name].data_ptr():
                    plan.bank[name].copy_(value)
            if plan.swap:
                self.start = self.end
            self.end = plan.bank
        elif rows.numel():
            if self._pinned(self.start):
                self.start = self.start.clone()
            if self._pinned(self.end):
                self.end = self.end.clone()
            moved = rows[plan.advance[rows]]
            if moved.numel():
                self.start[plan.write[moved]] = plan.sensitivities[moved]
            self.end[plan.write[rows]] = sens_end[rows]
        if rows.numel() == 0:
            return
        slots = plan.write[rows]
        self.start_c[slots] = c0[rows]
        self.has_start[slots] = True
        self.start_episode[slots] = plan.read[rows] < 0  # written rows that read no S_0 start a chain
        self.end_c[slots] = end_c[rows]
        self.end_exact[slots] = exact_end
        self.has_end[slots] = True
        self.free[slots] = True if ended is None else ended[rows]

    def pin(self, node, sensitivities: TensorDict) -> None:
        """``sensitivities`` (a bank) is S_0 of a call whose backward has not run yet."""
        self._pins = [p for p in self._pins if p.active]
        self._pins.append(_Pin(node, sensitivities["weight_ih"].data_ptr()))

    # ------------------------------------------------------------------ internals
    def _pinned(self, bank: TensorDict) -> bool:
        self._pins = [p for p in self._pins if p.active]
        ptr = bank["weight_ih"].data_ptr()
        return any(p.data_ptr == ptr for p in self._pins)

    def _search(self, c0: Tensor) -> tuple[int, bool]:
        """Slot whose segment end (continue) or start (repeat) is ``c0``: (slot, is_continue);
        (-1, False) if none, (-2, False) if several."""
        ends = (self.has_end & _matches(self.end_c, self.end_exact, c0)).nonzero().flatten()
        starts = (self.has_start & ~self.start_episode & (self.start_c == c0).all(-1)).nonzero().flatten()
        candidates = set(ends.tolist()) | set(starts.tolist())
        if not candidates:
            return -1, False
        if len(candidates) > 1:
            return -2, False
        slot = candidates.pop()
        return slot, bool((ends == slot).any())

    def _find_episode(self, end_c: Tensor, exact: bool) -> int:
        """A slot whose segment started an episode and ended at ``end_c`` (bit for bit, or within
        rounding of a recomputed end), else -1."""
        found = self.has_end & self.start_episode & _matches(
            self.end_c, self.end_exact & exact, end_c
        )
        slots = found.nonzero().flatten()
        return int(slots[0]) if slots.numel() else -1

    def _claim(self, hint: int, used: set[int], own: bool = False) -> int:
        """A slot for a new chain: the row's own if free (or new, or ``own``: the hint names the row's
        env), else any free one, else a new one (up to twice the largest batch), else the least
        recently used one (-1 if this call uses them all)."""
        free = self.free | ~self.has_end
        if hint < self.num_slots and (own or bool(free[hint])) and hint not in used:
            return hint
        if hint >= self.num_slots:  # a new env slot named by the batch (slot_key)
            self._grow(hint + 1 - self.num_slots)
            return hint
        for slot in free.nonzero().flatten().tolist():
            if slot not in used:
                return slot
        if self.num_slots < 2 * self.max_rows:
            self._grow(1)
            return self.num_slots - 1
        order = torch.argsort(self.last_used).tolist()
        for slot in order:
            if slot not in used:
                return slot
        return -1

    def _allocate(self, num_slots: int, shapes: dict[str, torch.Size], hidden: int, like: Tensor) -> None:
        zeros = {name: like.new_zeros(num_slots, *shape) for name, shape in shapes.items()}
        self.start = TensorDict(zeros, batch_size=[num_slots])
        self.end = self.start.clone()
        self.start_c = like.new_zeros(num_slots, hidden)
        self.end_c = like.new_zeros(num_slots, hidden)
        flags = torch.zeros(num_slots, dtype=torch.bool, device=like.device)
        self.has_start, self.has_end, self.start_episode = flags.clone(), flags.clone(), flags.clone()
        self.end_exact = flags.clone()
        self.free = ~flags
        self.last_used = torch.zeros(num_slots, dtype=torch.long, device=like.device)

    def _grow(self, extra: int) -> None:
        def more(t: Tensor) -> Tensor:
            return torch.cat((t, t.new_zeros(extra, *t.shape[1:])))

        size = [self.num_slots + extra]
        self.start = self.start.apply(more, batch_size=size)
        self.end = self.end.apply(more, batch_size=size)
        for name in ("start_c", "end_c", "has_start", "has_end", "end_exact", "start_episode", "last_used"):
            setattr(self, name, more(getattr(self, name)))
        self.free = torch.cat((self.free, self.free.new_ones(extra)))

    def _check_compatible(self, c0: Tensor, shapes: dict[str, torch.Size]) -> None:
        if self.start_c.dtype != c0.dtype or self.start_c.shape[-1] != c0.shape[-1]:
            raise ValueError(
                "carried sensitivities were made for states "
                f"{tuple(self.start_c.shape[1:])} {self.start_c.dtype}, got {tuple(c0.shape[1:])} "
                f"{c0.dtype}; call reset_sensitivities()"
            )
