"""R2AC as a Lightning recipe: ``python -m recipes fit --config configs/<suite>/<task>.yaml``.

The LightningModule owns the agent, the loss and a TorchRL ``Collector``; the collector is the data
side (:class:`CollectorStream`, an ``IterableDataset``). Each training step is one segment
[num_envs, M] → :func:`rtrl_modules.training.loss_and_metrics` (the same logic as the plain loop);
Lightning then runs the backward (RTRL gradients are complete when it returns), clips the gradient
norm (``trainer.gradient_clip_val``), steps RMSProp and the linear LR decay.

Each DDP rank builds its own envs (seeded by rank) and carries its own sensitivities; gradients are
all-reduced as usual.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import grad_norm
from tensordict import TensorDict, TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rtrl_modules.envs import EVAL_PROTOCOLS, SUITES, evaluate, evaluation_plan, make_env, make_eval_env
from rtrl_modules.modules import RECURRENT_KINDS, PreviousReward, make_agent
from rtrl_modules.modules.agent import FREEZE_CHOICES, PREV_REWARD_AT_RESET, STEM_INITS, STEM_PARTS, STEMS
from rtrl_modules.objectives import R2ACLoss
from rtrl_modules.training import (
    COLLECTION_MODES,
    SENSITIVITY_SOURCES,
    SLOT_KEY,
    EnvSlot,
    env_factory,
    episode_stats,
    inactive_fraction,
    linear_decay,
    loss_and_metrics,
    make_collector,
    make_optimizer,
    segments,
)


class CollectorStream(IterableDataset):
    """Batches of the module's collector, [num_envs, M] each, until ``total_frames`` are collected."""

    def __init__(self, module: R2ACModule) -> None:
        self.module = module

    def __iter__(self) -> Iterator[TensorDictBase]:
        module = self.module
        while module.frames < module.hparams.total_frames:
            yield module.collect()


def _identity(batch):
    return batch


class R2ACModule(LightningModule):
    """R2AC (V-trace actor-critic, eLSTM trained by RTRL) and its baselines on any suite.

    Args:
        suite, task, num_envs, env_options: the environments (``rtrl_modules.envs.make_env``).
        core: ``"rtrl"`` (paper), ``"rtrl_stepwise"``, ``"tbptt"`` (same eLSTM, truncated),
            ``"lstm"`` (TorchRL's ``LSTMModule``, truncated) or ``"feedforward"``.
        hidden_size, embed_size, forget_bias: network sizes (N; stem output, None = N as in the
            official ProcGen network) and eLSTM b_f init.
        init: eLSTM initialisation, ``"default"`` (U(±1/√N)) or ``"official"`` (N(0, 0.1²)).
        stem: the pixel stem: ``"impala"`` (the paper's IMPALA ResNet), ``"nature"`` (the DQN Nature
            CNN) or ``"shallow"`` (IMPALA's shallow model); the last two are for CPU-sized runs
            (``rtrl_modules.modules.make_agent``). Vector observations get an MLP stem.
        stem_init: ``"default"`` (PyTorch's) or ``"orthogonal"`` (gain √2, zero biases, as A2C's and
            CleanRL's Atari networks; ``rtrl_modules.modules.init_stem``).
        conv_scale: stem channel multiplier (official ``--conv_scale``).
        feedforward_layer: ``core="feedforward"`` only: False is the official baseline (heads on
            the stem output and previous reward, no layer).
        prev_reward_at_reset: previous reward at an episode's first step: ``"zero"`` or ``"last"``
            (the previous episode's last reward, as the official actors pass it).
        total_frames: environment steps over all envs of this rank.
        lr, rms_alpha, rms_eps, lr_decay: RMSProp and its linear decay to 0.
        rms_square_avg_init: RMSProp's starting average of squared gradients: 0 (PyTorch's) or 1
            (TensorFlow's, which A2C's published settings assume: small first updates instead of
            ~10·lr; see ``rtrl_modules.training.make_optimizer``).
        gamma, entropy_cost, baseline_cost, reward_scale, reward_clip, reduction, clip_ratio: the R2AC
            loss (``clip_ratio``: PPO's clipped surrogate, for ``update_epochs`` > 1).
        stem_checkpoint, stem_parts, freeze_stem: pre-trained vision stem (ours or an official
            checkpoint; paper's DMLab memory setting): ``stem_parts`` ``"all"`` or ``"conv"``
            (official ``--not_load_fc``); ``freeze_stem`` False, True / ``"all"``, ``"conv"``,
            ``"fc"`` (official ``--freeze_conv`` / ``--freeze_fc``).
        eval_episodes: greedy episodes of the final evaluation (0: none); ProcGen evaluates the
            train and the three test level sets.
        eval_protocol: ``"default"`` (``eval_episodes`` per set) or ``"official"`` (the official
            code's: ProcGen 200 episodes per level set, train = 200 levels from 0; DMLab 3 runs
            × 100 episodes; Atari 5 × 30); see ``rtrl_modules.envs.evaluation_plan``.
        validate_every, validation_episodes, validation_env_options: every ``validate_every``
            frames (0: never), ``validation_episodes`` greedy episodes on envs with the
            ``env_options`` updated by ``validation_env_options`` (ProcGen:
            ``{level_set: valid}``, levels 500-999); the best mean return so far is kept as
            ``checkpoints/best.ckpt`` (official ``model_best_val.tar``).
        seed: base seed (rank r uses seed + 1000·r for its envs; worker w of a rank adds 100·w).
        num_threads: torch threads (1 is best with envpool's worker threads on small CPUs).
        collection, num_workers, weight_update_interval: where the actors run (docs/recipes.md,
            "Decoupled actors"): ``"single"`` (a ``Collector`` in this process; acting and learning
            alternate), ``"sync"`` or ``"async"`` (TorchRL's ``MultiSyncCollector`` /
            ``MultiAsyncCollector``: ``num_workers`` processes per rank, each acting in ``num_envs``
            envs with a copy of the policy that gets the learner's weights every
            ``weight_update_interval`` updates; ``"async"`` trains on each worker's
            [num_envs, M] batch as it arrives, ``"sync"`` on all workers' [num_workers·num_envs, M]).
            The learner carries exact RTRL per env slot across workers; V-trace corrects the lag.
        update_epochs, minibatches: updates per collected batch (PPO-style reuse): ``update_epochs``
            passes over the batch, each split into ``minibatches`` random groups of env rows; 1, 1
            (default): one update per batch, as the paper. V-trace corrects the targets for the
            policy's lag; ``clip_ratio`` bounds the policy's steps. RTRL stays exact (each pass
            repeats its segment's start; the envs tag their rows with their slot, ``EnvSlot``).
        sensitivities: who carries the RTRL sensitivities with ``"sync"``/``"async"``:
            ``"learner"`` (default, per env slot) or ``"actor"`` (the official code's way: the actors
            step them with their weights and ship S_0 once per segment; RTRL cores only).
    """

    def __init__(
        self,
        suite: Literal["atari", "procgen", "dmlab", "popgym", "memory"] = "memory",
        task: str = "delayed_cue",
        num_envs: int = 32,
        env_options: dict[str, Any] | None = None,
        core: Literal["rtrl", "rtrl_stepwise", "tbptt", "lstm", "feedforward"] = "rtrl",
        hidden_size: int = 256,
        embed_size: int | None = 256,
        forget_bias: float | None = None,
        init: Literal["default", "official"] = "default",
        stem: Literal["impala", "nature", "shallow"] = "impala",
        stem_init: Literal["default", "orthogonal"] = "default",
        conv_scale: int = 1,
        feedforward_layer: bool = True,
        prev_reward_at_reset: Literal["zero", "last"] = "zero",
        segment_length: int = 50,
        total_frames: int = 1_000_000,
        lr: float = 6e-4,
        rms_alpha: float = 0.99,
        rms_eps: float = 0.01,
        rms_square_avg_init: float = 0.0,
        lr_decay: bool = True,
        gamma: float = 0.99,
        entropy_cost: float = 0.01,
        baseline_cost: float = 0.5,
        reward_scale: float = 1.0,
        reward_clip: float | None = 1.0,
        reduction: Literal["sum", "mean"] = "sum",
        clip_ratio: float | None = None,
        stem_checkpoint: str | None = None,
        stem_parts: Literal["all", "conv"] = "all",
        freeze_stem: bool | Literal["all", "conv", "fc"] = False,
        eval_episodes: int = 0,
        eval_protocol: Literal["default", "official"] = "default",
        validate_every: int = 0,
        validation_episodes: int = 10,
        validation_env_options: dict[str, Any] | None = None,
        seed: int = 0,
        num_threads: int | None = None,
        collection: Literal["single", "sync", "async"] = "single",
        num_workers: int = 1,
        weight_update_interval: int = 1,
        sensitivities: Literal["learner", "actor"] = "learner",
        update_epochs: int = 1,
        minibatches: int = 1,
    ) -> None:
        super().__init__()
        # Literal types let the CLI reject bad values while parsing; these checks serve Python callers.
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; valid choices are {', '.join(SUITES)}")
        if core not in RECURRENT_KINDS:
            raise ValueError(f"unknown core {core!r}; valid choices are {', '.join(RECURRENT_KINDS)}")
        for name, value, choices in (
            ("init", init, ("default", "official")),
            ("stem", stem, tuple(STEMS)),
            ("stem_init", stem_init, STEM_INITS),
            ("prev_reward_at_reset", prev_reward_at_reset, PREV_REWARD_AT_RESET),
            ("stem_parts", stem_parts, STEM_PARTS),
            ("freeze_stem", freeze_stem, FREEZE_CHOICES),
            ("eval_protocol", eval_protocol, EVAL_PROTOCOLS),
            ("collection", collection, COLLECTION_MODES),
            ("sensitivities", sensitivities, SENSITIVITY_SOURCES),
        ):
            if value not in choices:
                listed = ", ".join(map(str, choices))
                raise ValueError(f"unknown {name} {value!r}; valid choices are {listed}")
        for name, value in (
            ("num_envs", num_envs),
            ("segment_length", segment_length),
            ("total_frames", total_frames),
            ("conv_scale", conv_scale),
            ("validation_episodes", validation_episodes),
            ("num_workers", num_workers),
            ("weight_update_interval", weight_update_interval),
            ("update_epochs", update_epochs),
            ("minibatches", minibatches),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_envs * segment_length > total_frames:
            raise ValueError(
                f"total_frames={total_frames} is less than one update (num_envs × segment_length = "
                f"{num_envs} × {segment_length} = {num_envs * segment_length} frames)"
            )
        if minibatches > num_envs:
            raise ValueError(
                f"minibatches={minibatches} exceeds num_envs={num_envs} (minibatches split env rows)"
            )
        if sensitivities == "actor" and (collection == "single" or not core.startswith("rtrl")):
            raise ValueError(
                f"sensitivities='actor' needs collection 'sync' or 'async' and an RTRL core, got "
                f"collection={collection!r}, core={core!r}"
            )
        if collection == "single" and num_workers != 1:
            raise ValueError(
                f"num_workers={num_workers} needs collection 'sync' or 'async' (single: 1 worker)"
            )
        if env_options and "seed" in env_options:
            raise ValueError("set the seed with seed (rank r uses seed + 1000·r), not with env_options.seed")
        self.save_hyperparameters()
        if num_threads:
            torch.set_num_threads(num_threads)
        if validate_every < 0:
            raise ValueError(f"validate_every must be >= 0 (0: no validation), got {validate_every}")
        if rms_square_avg_init < 0:
            raise ValueError(
                f"rms_square_avg_init must be >= 0 (0: PyTorch's, 1: TensorFlow's), got {rms_square_avg_init}"
            )
        self._tags_env_slots = (collection != "single" or minibatches > 1) and core.startswith(
            ("rtrl", "tbptt")
        )
        self.frames = 0
        self.batch_frames = 0  # frames of the latest batch
        self.best_validation = -math.inf  # best validation mean return so far (validate_every)
        self.history: list[dict[str, float]] = []
        self._resume: dict[str, Any] | None = None
        # The latest batch and the row groups of its updates still to make (update_epochs, minibatches)
        self._batch: TensorDictBase | None = None
        self._pending_rows: list[torch.Tensor] = []
        # The networks are built here (not in setup) so checkpoints load into them; envs come in setup.
        probe = self._make_env(num_envs=1, seed=seed)
        observation_key = "pixels" if "pixels" in probe.observation_spec.keys() else "observation"
        self.agent = make_agent(
            probe.observation_spec[observation_key].shape[1:],
            int(probe.action_spec.space.n),
            core=core,
            hidden_size=hidden_size,
            embed_size=embed_size,
            stem=stem,
            stem_init=stem_init,
            conv_scale=conv_scale,
            init=init,
            feedforward_layer=feedforward_layer,
            stem_checkpoint=stem_checkpoint,
            stem_parts=stem_parts,
            freeze_stem=freeze_stem,
            **(
                {"forget_bias": forget_bias}
                if forget_bias is not None and core.startswith(("rtrl", "tbptt"))
                else {}
            ),
            # Envs tagged with learner slots (worker processes, minibatches of env rows): exact RTRL
            # per env slot whichever rows a batch holds.
            **({"slot_key": SLOT_KEY} if self._tags_env_slots else {}),
        )
        probe.close()
        self.actor, self.network = self.agent.actor, self.agent.network
        self.loss = R2ACLoss(
            self.network,
            gamma=gamma,
            entropy_cost=entropy_cost,
            baseline_cost=baseline_cost,
            reward_scale=reward_scale,
            reward_clip=reward_clip,
            reduction=reduction,
            clip_ratio=clip_ratio,
        )
        # Envs and collector are runtime objects, not submodules: not in state_dict, not wrapped by DDP.
        self._runtime: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ envs and data
    def _make_env(self, num_envs: int, seed: int, evaluation: bool = False):
        hp = self.hparams
        options = {**(hp.env_options or {}), "seed": seed}
        build = make_eval_env if evaluation else make_env
        return build(hp.suite, hp.task, num_envs, **options)

    def _agent_transforms(self) -> list:
        """What the agent reads besides the observation: the previous reward and, for recurrent
        cores, the primer of the carried cell state."""
        transforms = [PreviousReward(at_reset=self.hparams.prev_reward_at_reset)]
        if hasattr(self.agent.core, "make_tensordict_primer"):
            transforms.append(self.agent.core.make_tensordict_primer())
        return transforms

    def _add_agent_transforms(self, env):
        for transform in self._agent_transforms():
            env.append_transform(transform)
        return env

    @property
    def env(self):
        return self._runtime.get("env")

    @property
    def collector(self):
        return self._runtime.get("collector")

    def setup(self, stage: str) -> None:
        if stage != "fit" or self.collector is not None:
            return
        hp = self.hparams
        seed = hp.seed + 1000 * self.global_rank
        torch.manual_seed(seed)
        if hp.collection == "single":
            env = self._add_agent_transforms(self._make_env(hp.num_envs, seed))
            if self._tags_env_slots:
                env.append_transform(EnvSlot())
            collector = make_collector(env, self.actor, hp.segment_length)
        else:  # this rank's workers build their own envs (worker w: seed + 100·w)
            env, options = None, hp.env_options or {}
            factories = [
                env_factory(
                    hp.suite, hp.task, hp.num_envs, self._agent_transforms(), **options, seed=seed + 100 * w
                )
                for w in range(hp.num_workers)
            ]
            collector = make_collector(
                factories, self.actor, hp.segment_length, mode=hp.collection, num_workers=hp.num_workers,
                num_envs=hp.num_envs, sensitivities=hp.sensitivities,
            )  # fmt: skip
        batches = segments(collector, self.actor, hp.weight_update_interval)
        self._runtime.update(env=env, collector=collector, batches=batches)

    def on_train_start(self) -> None:
        # Lightning restores a checkpoint after setup(): continue the episodes it was running.
        if self._resume is not None:
            self._restore_actor_side(self._resume)
            self._resume = None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(CollectorStream(self), batch_size=None, collate_fn=_identity)

    def collect(self) -> TensorDictBase:
        with set_exploration_type(ExplorationType.RANDOM):
            batch = next(self._runtime["batches"])
        return batch

    @property
    def updates_per_run(self) -> int:
        hp = self.hparams
        rows = hp.num_envs * (hp.num_workers if hp.collection == "sync" else 1)
        return math.ceil(hp.total_frames / (rows * hp.segment_length)) * hp.update_epochs * hp.minibatches

    def plan_updates(self, rows: int) -> list[torch.Tensor]:
        """Row indices of each update on a batch of ``rows`` env rows: ``update_epochs`` passes,
        each a random split into ``minibatches`` groups (the whole batch, in order, if 1)."""
        hp = self.hparams
        plan = []
        for _ in range(hp.update_epochs):
            order = torch.randperm(rows) if hp.minibatches > 1 else torch.arange(rows)
            plan.extend(order.tensor_split(hp.minibatches))
        return plan

    def minibatch(self, batch: TensorDictBase, rows: torch.Tensor) -> TensorDictBase:
        """The [len(rows), M] part of ``batch`` that one planned update trains on (the batch itself
        when updates take whole batches, so nothing is copied)."""
        return batch if self.hparams.minibatches == 1 else batch[rows]

    # ------------------------------------------------------------------------------------ training
    def training_step(self, dataloader_iter: Iterator) -> torch.Tensor:
        # Taking the iterator (not a batch) stops Lightning from prefetching: each segment is
        # collected with the parameters of the latest update, and a checkpoint never loses a
        # collected-but-untrained segment (which would misalign the carried sensitivities); a batch
        # with updates still to make is saved with the checkpoint.
        log, batch = {}, None
        if not self._pending_rows:  # the latest batch is used up: collect the next one
            batch, _, _ = next(dataloader_iter)  # (batch, batch index, dataloader index)
            self._batch, self._pending_rows = batch, self.plan_updates(batch.shape[0])
            self.frames += batch.numel()
            self.batch_frames = batch.numel()  # all workers' rows in "sync" collection
            now = time.monotonic()
            if getattr(self, "_step_clock", None) is not None and now > self._step_clock:
                log["train/fps"] = batch.numel() * self.trainer.world_size / (now - self._step_clock)
            self._step_clock = now
        rows = self._pending_rows.pop(0)
        update = self.minibatch(self._batch, rows)
        total, metrics = loss_and_metrics(self.loss, update)
        self.last_loss = total.detach()  # read by recipes.callbacks.DivergenceGuard
        log.update({f"train/{k}": v for k, v in metrics.items()})
        log["train/loss"] = total.detach()
        log["frames"] = float(self.frames * self.trainer.world_size)
        log["train/lr"] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        if "embed_obs" in update.keys():  # the stem's ReLU output, as the actors computed it
            log["train/stem_inactive_units"] = inactive_fraction(update.get("embed_obs"))
        stats = {} if batch is None else episode_stats(batch)  # a batch's episodes count once
        if "episode_return" in stats and stats["episode_return"].numel():
            log["train/episode_return"] = stats["episode_return"].mean()
            log["train/episode_length"] = stats["episode_length"].mean()
        self.log_dict(log, prog_bar=False, on_step=True, on_epoch=False, batch_size=1, sync_dist=False)
        if "train/episode_return" in log:
            self.log("return", log["train/episode_return"], prog_bar=True, on_step=True, batch_size=1)
            self.history.append(
                {"frames": log["frames"], "episode_return": float(log["train/episode_return"])}
            )
        return total

    def on_train_end(self) -> None:
        if self.trainer.world_size > 1:  # DDP: every rank must hold the same parameters
            checksum = torch.stack([p.detach().double().sum() for p in self.parameters()]).sum()
            gathered = self.all_gather(checksum)
            if not torch.all(gathered == gathered[0]):
                raise RuntimeError(f"DDP ranks hold different parameters: checksums {gathered.tolist()}")
            if self.global_rank == 0:
                print(f"DDP check: parameters identical on {self.trainer.world_size} ranks", flush=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = grad_norm(self, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, batch_size=1)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = make_optimizer(
            params, lr=hp.lr, alpha=hp.rms_alpha, eps=hp.rms_eps, square_avg_init=hp.rms_square_avg_init
        )
        if not hp.lr_decay:
            return optimizer
        scheduler = linear_decay(optimizer, self.updates_per_run)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Parameters, optimizer, LR schedule and the learner's carried sensitivities (part of the
        # RTRL module's state_dict) are saved by Lightning; add the actor side and the counters.
        checkpoint["r2ac"] = {
            "frames": self.frames,
            "best_validation": self.best_validation,
            "history": self.history,
            # plain nested dicts of tensors, so Lightning can load the checkpoint with weights_only=True
            # (multi-process collection: the actors' state lives in the workers and is not saved)
            "actor_carrier": None
            if getattr(self.collector, "_carrier", None) is None
            else self.collector._carrier.to_dict(),
            "env_state": self._env_state(),
            "rng": torch.get_rng_state(),
            # updates still to make on the latest batch (update_epochs, minibatches > 1)
            "pending": None
            if not self._pending_rows
            else {
                "batch": self._batch.to_dict(),
                "batch_size": list(self._batch.batch_size),
                "rows": list(self._pending_rows),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("r2ac", {})
        self.frames = int(state.get("frames", 0))
        self.best_validation = float(state.get("best_validation", -math.inf))
        self.history = list(state.get("history", []))
        pending = state.get("pending")
        if pending is not None:
            self._batch = TensorDict.from_dict(pending["batch"], batch_size=pending["batch_size"])
            self._pending_rows = list(pending["rows"])
        self._resume = state

    def _env_state(self) -> dict[str, Any] | None:
        base = None if self.env is None else self.env.base_env
        return base.episode_state() if hasattr(base, "episode_state") else None

    def _restore_actor_side(self, state: dict[str, Any]) -> None:
        """Continue the running episodes: the actor's state (observation, hidden state, counters)
        and, where the engine allows it (native memory tasks), the env's own state. Engines that
        cannot be snapshotted (Atari, ProcGen) restart their episodes."""
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"])
        base = None if self.env is None else self.env.base_env  # None: the workers' envs restart
        if state.get("env_state") is None or not hasattr(base, "load_episode_state"):
            # The episodes restart: no segment will continue the carried ones.
            if hasattr(self.agent.core, "reset_sensitivities"):
                self.agent.core.reset_sensitivities()
        else:
            carrier = state.get("actor_carrier")
            if carrier is not None:
                self.collector._carrier.update(TensorDict.from_dict(carrier, batch_size=self.env.batch_size))
            base.load_episode_state(state["env_state"])

    # ------------------------------------------------------------------------------------ evaluation
    def greedy_evaluation(self, num_episodes: int | None = None) -> dict[str, float]:
        """Mean greedy (argmax) return by :func:`~rtrl_modules.envs.evaluation_plan` (``eval_protocol``):
        ProcGen per level set plus ``"test_mean"``; other suites ``"greedy_return"`` (and, for the
        official protocol's repeated runs, each run's mean as ``"run_<k>"``). ``num_episodes``
        (default ``eval_episodes``; 0 = none) is the number of episodes per set; the official
        protocol uses its own counts unless ``num_episodes`` is given."""
        hp = self.hparams
        episodes = hp.eval_episodes if num_episodes is None else num_episodes
        if episodes <= 0:
            return {}
        official = hp.eval_protocol == "official"
        plan = evaluation_plan(hp.suite, hp.eval_protocol, num_episodes if official else episodes)
        returns = {part.name: self.greedy_returns(part.episodes, **part.options) for part in plan}
        results = {name: float(r.mean()) for name, r in returns.items() if name}
        if hp.suite == "procgen":
            tests = [v for k, v in results.items() if k.startswith("test")]
            results["test_mean"] = sum(tests) / len(tests)
        else:
            results["greedy_return"] = float(torch.cat(list(returns.values())).mean())
        return results

    def greedy_returns(
        self,
        num_episodes: int,
        *,
        level_set: str | None = None,
        run: int = 0,
        max_steps: int | None = None,
        policy: Any = None,
        env_options: dict[str, Any] | None = None,
        greedy: bool = True,
    ) -> torch.Tensor:
        """Returns of ``num_episodes`` greedy episodes, float32 ``[N]`` (fewer if ``max_steps`` stops
        first), with the envs, seeds and batch size of :meth:`greedy_evaluation` (same numbers).
        ProcGen plays ``level_set`` (default: the training config's levels); other suites use the
        evaluation seed ``seed + 10_000 + run``. ``env_options`` update the config's (validation).
        ``policy`` wraps the actor (``recipes.evaluate`` records frames with it); ``greedy=False``
        samples the actions from the policy instead of taking its argmax."""
        hp = self.hparams
        options = {**(hp.env_options or {}), **(env_options or {})}
        if hp.suite == "procgen":
            if level_set is not None:
                options = {k: v for k, v in options.items() if k not in ("num_levels", "start_level")}
                options["level_set"] = level_set
            num_envs = min(8, num_episodes)
        else:
            if level_set is not None:
                raise ValueError(f"level_set is for ProcGen only (suite {hp.suite!r})")
            options["seed"] = hp.seed + 10_000 + run
            num_envs = min(hp.num_envs, num_episodes)
        if "+" in hp.task:  # multi-task ProcGen: one env per game at least, the same number each
            games = len(hp.task.split("+"))
            num_envs = games * max(1, num_envs // games)
        env = self._add_agent_transforms(make_eval_env(hp.suite, hp.task, num_envs, **options))
        try:
            return evaluate(env, policy or self.actor, num_episodes, greedy=greedy, max_steps=max_steps)
        finally:
            env.close()

    # ------------------------------------------------------------------------------------ validation
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Every ``validate_every`` frames: greedy validation; a new best is saved as ``best.ckpt``."""
        every = self.hparams.validate_every
        if not every or (self.frames // every) == ((self.frames - self.batch_frames) // every):
            return
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                returns = self.greedy_returns(
                    self.hparams.validation_episodes, env_options=self.hparams.validation_env_options
                )
        finally:
            self.train(was_training)
        value = returns.mean().to(self.device)
        if self.trainer.world_size > 1:  # every rank validates on its own envs; one decision
            value = self.all_gather(value).mean()
        self.log("val/greedy_return", value, on_step=True, batch_size=1)
        if float(value) > self.best_validation:
            self.best_validation = float(value)
            callback = self.trainer.checkpoint_callback
            folder = (
                Path(callback.dirpath)
                if callback is not None and callback.dirpath
                else (Path(self.trainer.log_dir or self.trainer.default_root_dir) / "checkpoints")
            )
            self.trainer.save_checkpoint(folder / "best.ckpt")

    # ``recipes test|validate --config <cfg> --ckpt_path <ckpt>``: one dummy batch, one greedy evaluation.
    DEFAULT_TEST_EPISODES = 10  # when the config's eval_episodes is 0

    def on_fit_start(self) -> None:
        # Validation (a greedy evaluation) is not part of fit: LearningCurve evaluates at its end.
        # No sanity check, no validation loop; restored in on_fit_end for a later trainer.validate().
        self._limit_val_batches = self.trainer.limit_val_batches
        self.trainer.limit_val_batches = 0

    def on_fit_end(self) -> None:
        if getattr(self, "_limit_val_batches", None) is not None:
            self.trainer.limit_val_batches, self._limit_val_batches = self._limit_val_batches, None

    def _evaluation_loader(self) -> DataLoader:
        return DataLoader([0], batch_size=None)  # one dummy batch: the step runs one greedy evaluation

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader()

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader()

    def _log_greedy_evaluation(self, prefix: str) -> dict[str, float]:
        episodes = self.hparams.eval_episodes or self.DEFAULT_TEST_EPISODES
        results = self.greedy_evaluation(episodes)
        log = {
            f"{prefix}/" + (key if key == "greedy_return" else f"greedy_return_{key}"): value
            for key, value in results.items()
        }
        if "test_mean" in results:  # ProcGen: the headline number is the mean over the test level sets
            log[f"{prefix}/greedy_return"] = results["test_mean"]
        log[f"{prefix}/episodes"] = float(episodes)
        self.log_dict(log, batch_size=1, on_step=False, on_epoch=True, sync_dist=True)
        return log

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._log_greedy_evaluation("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._log_greedy_evaluation("test")

    def teardown(self, stage: str) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self._runtime.clear()


class LearningCurve(Callback):
    """At the end of ``fit``: greedy evaluation, ``learning_curve.csv`` and ``learning_curve.png``
    (episode return against frames) in the run's log folder."""

    def __init__(self, smoothing: int = 50) -> None:
        self.smoothing = smoothing

    def on_fit_end(self, trainer: Trainer, module: LightningModule) -> None:
        if not isinstance(module, R2ACModule):
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank
        if trainer.global_rank != 0:
            return
        folder.mkdir(parents=True, exist_ok=True)
        evaluation = module.greedy_evaluation()
        from recipes.plots import CURVE_COLUMNS, CURVE_FILE  # the columns recipes.compare reads

        with open(folder / CURVE_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CURVE_COLUMNS))
            writer.writeheader()
            writer.writerows(module.history)
        if evaluation:
            with open(folder / "evaluation.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["metric", "value"])
                writer.writerows(evaluation.items())
            for logger in trainer.loggers:  # also in metrics.csv and TensorBoard, at the final frame count
                metrics = {f"eval/{key}": value for key, value in evaluation.items()}
                logger.log_metrics(metrics, step=module.frames)
                logger.save()
            print(f"final greedy evaluation: {evaluation}", flush=True)
        if module.history:
            _plot(module, folder / "learning_curve.png", self.smoothing)
            print(f"learning curve: {folder / 'learning_curve.png'}", flush=True)


def _plot(module: R2ACModule, path: Path, smoothing: int) -> None:
    from recipes.plots import label_axes, new_figure, plot_run, save_figure

    hp = module.hparams
    frames = [h["frames"] for h in module.history]
    returns = [h["episode_return"] for h in module.history]
    fig, ax = new_figure()
    plot_run(ax, frames, returns, smoothing, label=f"{hp.core}, M={hp.segment_length}")
    label_axes(ax, f"{hp.suite}/{hp.task}")
    save_figure(fig, path)
