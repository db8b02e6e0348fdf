"""The plain TorchRL training loop of R2AC (no Lightning): envs → Collector → loss → RMSProp → clip → step.

    collector = make_collector(env, policy, segment_length=5, total_frames=500_000)
    optimizer = make_optimizer(loss.parameters())
    scheduler = linear_decay(optimizer, total_updates=len(collector))
    for batch in segments(collector, policy):    # [rows, M]: one segment per env, in order
        metrics = update(loss, batch, optimizer, scheduler, max_grad_norm=40.0)

Each segment is used for exactly one update, and the RTRL module carries each env's sensitivities
into its next segment (online learning: untruncated gradients across segments). The Lightning recipe
(``recipes/r2ac.py``) calls :func:`loss_and_metrics` and the same factories; Lightning then does the
backward, clipping and stepping.

Collection modes (:func:`make_collector`, IMPALA-style decoupled actors with ``"sync"``/``"async"``):

* ``"single"``: a ``Collector`` in the learner's process; acting and learning alternate.
* ``"sync"``: a ``MultiSyncCollector``: ``num_workers`` processes, each stepping its own
  ``num_envs`` envs with its own copy of the policy; one update per [num_workers · num_envs, M] batch.
* ``"async"``: a ``MultiAsyncCollector`` (:class:`InOrderAsyncCollector`): each worker's
  [num_envs, M] batch is trained on as it arrives while the other workers keep acting (acting and
  learning overlap).

Each worker keeps its envs in order, and its envs are tagged with their learner slot
(:class:`EnvSlot`, ``"env_slot"``), so an RTRL module built with ``slot_key="env_slot"`` keeps exact
RTRL per env slot across workers. The actors' copy of the policy gets the learner's weights every
``weight_update_interval`` updates (:func:`segments`, :func:`sync_weights`); V-trace corrects the lag.
With ``sensitivities="actor"`` the actors carry the sensitivities instead (the official code's way)
and ship S_0 once per segment (:class:`SensitivityRing`, :class:`ActorSensitivities`).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.collectors import BaseCollector, Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import Unbounded
from torchrl.envs import EnvBase, Transform
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import LossModule

from .core.recurrent import SENSITIVITY_KEY, STATE_KEY
from .envs import make_env
from .modules import RTRLModule, segment_start_counts

COLLECTION_MODES = ("single", "sync", "async")
SENSITIVITY_SOURCES = ("learner", "actor")  # who carries the RTRL sensitivities
SLOT_KEY = "env_slot"  # each env's learner slot, written by EnvSlot (use it as the RTRL module's slot_key)


class EnvSlot(Transform):
    """Writes each env's learner slot, ``worker · E + arange(E)``, as ``"env_slot"`` [E] int64.

    Written at reset and at every step (so also at ``("next", "env_slot")``). Worker ``w`` of a
    multi-process collector owns slots ``w·E .. w·E + E - 1``; an RTRL module built with
    ``slot_key="env_slot"`` files each env's segments under its own slot, whichever worker's batch
    they arrive in.
    """

    def __init__(self, worker: int = 0, key: str = SLOT_KEY) -> None:
        super().__init__(in_keys=[], out_keys=[key])
        self.worker = worker

    def _slots(self, batch_size: torch.Size, device) -> Tensor:
        count = max(1, math.prod(batch_size))
        return (self.worker * count + torch.arange(count, device=device)).reshape(batch_size)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        tensordict_reset.set(
            self.out_keys[0], self._slots(tensordict_reset.batch_size, tensordict_reset.device)
        )
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict.set(self.out_keys[0], self._slots(next_tensordict.batch_size, next_tensordict.device))
        return next_tensordict

    def transform_observation_spec(self, observation_spec):
        observation_spec[self.out_keys[0]] = Unbounded(
            shape=observation_spec.shape, dtype=torch.int64, device=observation_spec.device
        )
        return observation_spec


def _tagged_env(make_env: Callable[[], EnvBase], worker: int) -> EnvBase:
    """Worker ``worker``'s env: ``make_env()`` with its :class:`EnvSlot` appended (runs in the worker)."""
    env = make_env()
    env.append_transform(EnvSlot(worker))
    return env


def _build_env(suite: str, task: str, num_envs: int, transforms: tuple, options: dict) -> EnvBase:
    env = make_env(suite, task, num_envs, **options)
    for transform in transforms:
        env.append_transform(transform.clone())
    return env


def env_factory(
    suite: str, task: str, num_envs: int, transforms: Sequence[Transform] = (), **options: Any
) -> Callable[[], EnvBase]:
    """A picklable factory (for worker processes) of ``make_env(suite, task, num_envs, **options)``
    with (copies of) ``transforms`` appended, e.g. the agent's ``PreviousReward`` and primer."""
    return functools.partial(_build_env, suite, task, num_envs, tuple(transforms), options)


# ------------------------------------------------------------------ actor-carried sensitivities
def _rtrl_module(policy: torch.nn.Module) -> RTRLModule:
    found = [m for m in policy.modules() if isinstance(m, RTRLModule)]
    if not found:
        raise ValueError(
            "sensitivities='actor' needs a policy with an RTRL module (core 'rtrl'/'rtrl_stepwise')"
        )
    return found[0]


def _keep_rows(td: TensorDictBase, keep: Tensor) -> TensorDictBase:
    """``td`` [B, ...] with the rows where ``keep`` [B] is False set to zero."""
    return td.apply(lambda t: torch.where(keep.view(-1, *([1] * (t.dim() - 1))), t, t.new_zeros(())))


class SensitivityRing:
    """Shared-memory mailbox through which actors ship S_0, once per segment and env slot.

    ``sensitivities`` [slots, depth, ...] (the core's sensitivity shapes), ``states`` [slots, depth, N]
    (the c_0 each S_0 belongs to) and ``exact`` [slots, depth] (the actor followed the env since its
    episode start). A worker's k-th segment goes to entry ``k % depth``; the learner finds a row's
    entry by its c_0. Workers start a batch only after the learner took their previous one
    (:class:`InOrderAsyncCollector`), so an actor is at most one segment ahead.
    """

    def __init__(self, module: RTRLModule, num_slots: int, depth: int = 4) -> None:
        like = module.core.cell.weight_ih.detach()
        self.depth = depth
        self.sensitivities = TensorDict(
            {
                name: like.new_zeros(num_slots, depth, *shape)
                for name, shape in module.core.sensitivity_shapes().items()
            },
            batch_size=[num_slots, depth],
        ).share_memory_()
        self.states = like.new_zeros(num_slots, depth, module.hidden_size).share_memory_()
        self.exact = torch.zeros(num_slots, depth, dtype=torch.bool).share_memory_()

    def bytes_per_segment(self) -> int:
        """Bytes one env ships per segment (S_0 and its c_0)."""
        leaves = self.sensitivities[0, 0].values(include_nested=True, leaves_only=True)
        return sum(t.numel() * t.element_size() for t in leaves) + self.states[0, 0].nbytes


class ActorSensitivities:
    """Forward hook of the actors' policy: RTRL sensitivities per env, stepped with the actor's
    weights (``track_sensitivities=True`` under ``no_grad``, as the official code's actors do), and
    published into a :class:`SensitivityRing` at each segment start (:class:`ActorCarriedCollector`).

    S follows an env while the state the policy is given is the ``("next", state)`` it wrote (bit for
    bit) and restarts at ``is_init``; an env it lost track of (e.g. after the collector's dry-run
    call) stays inexact until its next episode start.
    """

    def __init__(self, ring: SensitivityRing) -> None:
        self.ring = ring
        self.sensitivities: TensorDict | None = None  # S [E, ...] of the state the actor wrote last
        self.states: Tensor | None = None  # that state [E, N]
        self.exact: Tensor | None = None  # [E] bool: followed since the episode start
        self.state_key = None
        self.segments = 0

    def _follows(self, c0: Tensor) -> Tensor:
        if self.states is None or self.states.shape != c0.shape:
            return torch.zeros(c0.shape[0], dtype=torch.bool, device=c0.device)
        return (self.states == c0).all(-1)

    def __call__(self, policy: torch.nn.Module, args: tuple, td: TensorDictBase) -> None:
        module = _rtrl_module(policy)
        self.state_key = module.state_key
        rows = td.reshape(-1)
        x, c0 = rows.get(module.value_key), rows.get(module.state_key)
        is_init = rows.get(module.is_init_key).reshape(-1, 1)
        follows = self._follows(c0)
        s0 = module.core.initial_state(c0.shape[0], dtype=c0.dtype)[SENSITIVITY_KEY]
        if bool(follows.any()):
            s0 = _keep_rows(self.sensitivities, follows & ~is_init[:, 0])
        with torch.no_grad():
            state = TensorDict({STATE_KEY: c0, SENSITIVITY_KEY: s0}, [c0.shape[0]])
            _, new = module.core(x.unsqueeze(1), state, is_init, "rtrl", track_sensitivities=True)
        exact = follows & self.exact if self.exact is not None and bool(follows.any()) else follows
        self.exact = is_init[:, 0] | exact
        self.sensitivities = new[SENSITIVITY_KEY].clone()
        self.states = rows.get(("next", module.state_key)).clone()

    def publish(self, carrier: TensorDictBase) -> None:
        """Ship S_0 of the segment that starts at ``carrier`` (the collector's current root step)."""
        if self.state_key is None:  # the policy has not run yet: every env starts an episode
            return
        rows = carrier.reshape(-1)
        slots, c0 = rows.get(SLOT_KEY).long(), rows.get(self.state_key)
        follows = self._follows(c0)
        index = self.segments % self.ring.depth
        if bool(follows.any()):
            self.ring.sensitivities[slots, index] = _keep_rows(self.sensitivities, follows)
        self.ring.states[slots, index] = c0
        self.ring.exact[slots, index] = follows & self.exact
        self.segments += 1


class ActorCarriedCollector(Collector):
    """A worker's ``Collector`` that publishes its actor's S_0 before each batch (one segment per env)."""

    def rollout(self) -> TensorDictBase:
        for module in self.policy.modules():
            for hook in module._forward_hooks.values():
                if isinstance(hook, ActorSensitivities):
                    hook.publish(self._carrier)
        return super().rollout()


def load_actor_sensitivities(module: RTRLModule, ring: SensitivityRing, batch: TensorDictBase) -> float:
    """Give ``module`` the actors' S_0 for the rows [B, T] of ``batch``: each row's ring entry is the
    one of its slot whose c_0 is the row's, bit for bit. Rows without an exact one get none (the
    module truncates them and counts it). Returns the relative difference between the actors' S_0 and
    the learner's own carried S_T where both exist (the actors' staleness; nan if none)."""
    slots = batch.get(SLOT_KEY)[:, 0].long()
    c0 = batch.get(module.state_key)[:, 0]
    found = ring.exact[slots] & (ring.states[slots] == c0.unsqueeze(1)).all(-1)  # [B, depth]
    usable = found.any(-1)
    s0 = ring.sensitivities[slots, found.int().argmax(-1)]
    learner = module.get_sensitivities()
    num_slots = ring.exact.shape[0]
    staleness = float("nan")
    if learner is not None and learner.batch_size[0] == num_slots:
        mine = learner["has_end"][slots] & (learner["end_c"][slots] == c0).all(-1) & usable
        if bool(mine.any()):
            a = torch.cat([t[mine].flatten(1) for t in s0.values(True, True)], 1)
            b = torch.cat([t[slots][mine].flatten(1) for t in learner["end"].values(True, True)], 1)
            staleness = float((a - b).norm() / b.norm().clamp_min(1e-30))
    module.reset_sensitivities(slots[~usable])  # no exact S_0 for these rows: they truncate
    module.offer_sensitivities(slots[usable], c0[usable], s0[usable])
    return staleness


class InOrderAsyncCollector(MultiAsyncCollector):
    """TorchRL's ``MultiAsyncCollector`` with room in its output queue for every worker's batch.

    With TorchRL's queue of one, a worker whose finished batch cannot be queued within TorchRL's 1 s
    timeout (the learner is busy and another worker's batch waits) drops it and collects the next one:
    its envs' segments then have gaps, which the learner can only truncate. With a slot per worker each
    worker queues its batch at once and waits for the learner (IMPALA's blocking actors)."""

    @property
    def _queue_len(self) -> int:
        return self.num_workers


def make_collector(
    env: EnvBase | Callable[[], EnvBase] | Sequence[Callable[[], EnvBase]],
    policy: TensorDictModuleBase,
    segment_length: int,
    total_frames: int = -1,
    *,
    mode: str = "single",
    num_workers: int = 1,
    num_envs: int | None = None,
    sensitivities: str = "learner",
    **kwargs: Any,
) -> BaseCollector:
    """A collector yielding segments of ``segment_length`` consecutive steps of each env, in order.

    Args:
        env: ``"single"``: the (batched) env, or a factory. ``"sync"``/``"async"``: a picklable
            factory run in every worker, or one factory per worker (e.g. with their own seeds).
        policy: the learner's policy. Multi-process modes act with a copy of it (weights synced by
            :func:`sync_weights`), so the learner's parameters never change under a running actor.
        segment_length: M, steps per env per batch.
        total_frames: frames over all envs and workers (-1: endless).
        mode: ``"single"``, ``"sync"`` or ``"async"`` (module docstring).
        num_workers: worker processes (``"single"``: 1).
        num_envs: envs per worker (B of each worker's env; needed by the multi-process modes).
        sensitivities: ``"learner"`` (the RTRL module carries them per env slot) or ``"actor"``
            (multi-process modes: the actors carry them and ship S_0 once per segment through the
            collector's ``sensitivity_ring``; :func:`segments` hands them to the learner's module).
        kwargs: passed to the TorchRL collector.

    Batches (use :func:`segments` to get them as [rows, M]): ``"single"`` [num_envs, M];
    ``"sync"`` [num_workers, num_envs, M]; ``"async"`` [num_envs, M] of one worker.
    """
    if mode not in COLLECTION_MODES:
        raise ValueError(f"unknown collection mode {mode!r}; valid choices are {', '.join(COLLECTION_MODES)}")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    if num_workers < 1 or (mode == "single" and num_workers != 1):
        raise ValueError(
            f"num_workers must be >= 1 (and 1 with mode='single'), got {num_workers} with {mode!r}"
        )
    if sensitivities not in SENSITIVITY_SOURCES:
        raise ValueError(
            f"unknown sensitivities {sensitivities!r}; valid choices are {', '.join(SENSITIVITY_SOURCES)}"
        )
    if sensitivities == "actor" and mode == "single":
        raise ValueError("sensitivities='actor' ships S_0 from worker processes: use mode 'sync' or 'async'")
    if mode == "single":
        env = env if isinstance(env, EnvBase) else env()
        num_envs = max(1, math.prod(env.batch_size))
        return Collector(
            env, policy, frames_per_batch=num_envs * segment_length, total_frames=total_frames, **kwargs
        )
    if isinstance(env, EnvBase) or num_envs is None or num_envs < 1:
        raise ValueError(
            f"mode={mode!r} builds the envs in the workers: pass a picklable env factory (or one per "
            f"worker) and num_envs >= 1 (envs per worker), got env={type(env).__name__}, num_envs={num_envs}"
        )
    factories = list(env) if isinstance(env, Sequence) else [env] * num_workers
    if len(factories) != num_workers:
        raise ValueError(f"got {len(factories)} env factories for num_workers={num_workers}")
    factories = [functools.partial(_tagged_env, make, worker) for worker, make in enumerate(factories)]
    kwargs.setdefault("exploration_type", ExplorationType.RANDOM)
    frames = num_envs * segment_length  # one worker's batch
    actors = copy.deepcopy(policy)  # shared with the workers; the learner's policy stays private
    ring = None
    if sensitivities == "actor":
        ring = SensitivityRing(_rtrl_module(policy), num_workers * num_envs)
        actors.register_forward_hook(ActorSensitivities(ring))
        kwargs["collector_class"] = ActorCarriedCollector
    if mode == "sync":
        collector = MultiSyncCollector(
            factories, actors, frames_per_batch=num_workers * frames, total_frames=total_frames,
            cat_results="stack", **kwargs,
        )  # fmt: skip
    else:
        collector = InOrderAsyncCollector(
            factories, actors, frames_per_batch=frames, total_frames=total_frames, **kwargs
        )
    collector.sensitivity_ring = ring
    return collector


def sync_weights(collector: BaseCollector, policy: TensorDictModuleBase) -> None:
    """Send ``policy``'s weights to the actors of a multi-process collector (a no-op for a
    single-process ``Collector``, whose actor is the learner's policy itself)."""
    if isinstance(collector, (MultiSyncCollector, MultiAsyncCollector)):
        collector.update_policy_weights_(TensorDict.from_module(policy))


def segments(
    collector: BaseCollector,
    policy: TensorDictModuleBase | None = None,
    weight_update_interval: int = 1,
) -> Iterator[TensorDictBase]:
    """The collector's batches as [rows, M] segments (rows: envs, of all workers for ``"sync"``).

    ``policy``'s weights are sent to the actors (:func:`sync_weights`; none if ``policy`` is None)
    when the first batch is asked for (so actors start from restored weights after a resume) and
    after every ``weight_update_interval``-th batch has been trained on (when the next one is asked for).
    """
    if weight_update_interval < 1:
        raise ValueError(f"weight_update_interval must be >= 1, got {weight_update_interval}")
    ring = getattr(collector, "sensitivity_ring", None)
    if ring is not None:
        if policy is None:
            raise ValueError("sensitivities='actor': pass the learner's policy to segments()")
        module = _rtrl_module(policy)
    if policy is not None:
        sync_weights(collector, policy)
    for i, batch in enumerate(collector):
        batch = batch.reshape(-1, batch.shape[-1])
        if ring is not None:  # the actors' S_0 for this batch's segments
            collector.actor_staleness = load_actor_sensitivities(module, ring, batch)
        yield batch
        if policy is not None and (i + 1) % weight_update_interval == 0:
            sync_weights(collector, policy)


def make_optimizer(
    params,
    lr: float = 6e-4,
    alpha: float = 0.99,
    eps: float = 0.01,
    momentum: float = 0.0,
    square_avg_init: float = 0.0,
) -> torch.optim.RMSprop:
    """RMSProp with the paper's settings (lr 6e-4, α 0.99, ε 0.01; IMPALA/torchbeast).

    ``square_avg_init``: the starting value of RMSProp's running average of squared gradients.
    PyTorch starts it at 0, so the first updates are about lr/√(1-α) = 10·lr per parameter, whatever
    the gradient's size; TensorFlow's RMSProp (A2C's and IMPALA's published settings) starts it at 1,
    so the first updates are small and grow as the average adapts (a warm-up of ~1/(1-α) updates).
    """
    optimizer = torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    if square_avg_init < 0:
        raise ValueError(f"square_avg_init must be >= 0, got {square_avg_init}")
    if square_avg_init > 0:
        # Filled in before the first step, this state is what torch.optim.RMSprop would create, with
        # the average at square_avg_init instead of 0; it is saved and restored like any other.
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state[p]
                state["step"] = torch.zeros((), dtype=step_dtype)
                state["square_avg"] = torch.full_like(p, square_avg_init, memory_format=torch.preserve_format)
                if momentum > 0:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def linear_decay(optimizer: torch.optim.Optimizer, total_updates: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate decayed linearly to 0 over ``total_updates`` scheduler steps."""
    if total_updates < 1:
        raise ValueError(f"total_updates must be >= 1, got {total_updates}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_updates))


def episode_stats(batch: TensorDictBase) -> dict[str, Tensor]:
    """Returns and lengths of the episodes that ended in ``batch`` (needs ``RewardSum``/``StepCounter``)."""
    done = batch.get(("next", "done")).squeeze(-1)
    stats = {"episodes": done.sum()}
    if ("next", "episode_reward") in batch.keys(include_nested=True):
        stats["episode_return"] = batch.get(("next", "episode_reward")).squeeze(-1)[done]
    if ("next", "step_count") in batch.keys(include_nested=True):
        stats["episode_length"] = batch.get(("next", "step_count")).squeeze(-1)[done].float()
    return stats


def inactive_fraction(features: Tensor) -> Tensor:
    """Fraction of the E units of ReLU features ``[..., E]`` that are zero at every position of the
    batch. A stem whose units have all stopped firing no longer sees its observations (a dead-ReLU
    collapse: the policy can then only learn state-independent action preferences)."""
    active = (features.detach().reshape(-1, features.shape[-1]) > 0).any(0)
    return 1.0 - active.float().mean()


def loss_and_metrics(loss_module: LossModule, batch: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss (the sum of the ``loss_*`` entries) and detached metrics for logging, with the
    running counts of exact and truncated RTRL segment starts (``rtrl_exact_starts``, ...)."""
    losses: TensorDict = loss_module(batch)
    total = sum(value for key, value in losses.items() if key.startswith("loss_"))
    metrics = {key: value.detach() for key, value in losses.items()}
    # Running counts of segment starts that got exact RTRL / the truncated gradient (RTRL cores only).
    for key, count in segment_start_counts(loss_module).items():
        if key in ("exact", "truncated"):
            metrics[f"rtrl_{key}_starts"] = torch.tensor(float(count))
    return total, metrics


def update(
    loss_module: LossModule,
    batch: TensorDictBase,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = 40.0,
) -> dict[str, float]:
    """One update on one segment: loss → backward (RTRL gradients complete) → clip → step."""
    total, metrics = loss_and_metrics(loss_module, batch)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if max_grad_norm is not None:
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    metrics["loss"] = total.detach()
    return {key: float(value) for key, value in metrics.items()}


def train(
    collector: BaseCollector,
    loss_module: LossModule,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = 40.0,
    log_every: int = 0,
    policy: TensorDictModuleBase | None = None,
    weight_update_interval: int = 1,
) -> list[dict[str, float]]:
    """Run ``collector`` to the end, one update per [rows, M] segment (:func:`segments`; ``policy``'s
    weights go to multi-process actors every ``weight_update_interval`` updates); returns per-update
    metrics (plus ``frames`` and the mean ``episode_return`` of episodes finished in that batch)."""
    history, frames = [], 0
    for i, batch in enumerate(segments(collector, policy, weight_update_interval)):
        metrics = update(loss_module, batch, optimizer, scheduler, max_grad_norm)
        frames += batch.numel()
        metrics["frames"] = frames
        stats = episode_stats(batch)
        if "episode_return" in stats and stats["episode_return"].numel():
            metrics["episode_return"] = float(stats["episode_return"].mean())
        history.append(metrics)
        if log_every and i % log_every == 0:
            shown = {k: round(v, 4) for k, v in metrics.items() if k in ("frames", "loss", "episode_return")}
            print(f"update {i}: {shown}", flush=True)
    return history
