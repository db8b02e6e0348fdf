"""The plain TorchRL training loop of R2AC (no Lightning): envs → Collector → loss → RMSProp → clip → step.

    collector = make_collector(env, policy, segment_length=5, total_frames=500_000)
    optimizer = make_optimizer(loss.parameters())
    scheduler = linear_decay(optimizer, total_updates=len(collector))
    for batch in collector:                      # [num_envs, M]: one segment per env, in order
        metrics = update(loss, batch, optimizer, scheduler, max_grad_norm=40.0)

Each segment is used for exactly one update, and the RTRL module carries each env's sensitivities
into its next segment (online learning: untruncated gradients across segments). The Lightning recipe
(``recipes/r2ac.py``) calls :func:`loss_and_metrics` and the same factories; Lightning then does the
backward, clipping and stepping.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.objectives import LossModule

from .modules import segment_start_counts


def make_collector(
    env: EnvBase,
    policy: TensorDictModuleBase,
    segment_length: int,
    total_frames: int = -1,
    **kwargs,
) -> Collector:
    """A synchronous ``Collector`` yielding [num_envs, segment_length] batches of consecutive steps.

    Synchronous collection keeps each env's segments contiguous and in order, which is what the
    learner-carried RTRL sensitivities need (docs/architecture.md).
    """
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    num_envs = max(1, math.prod(env.batch_size))
    return Collector(
        env,
        policy,
        frames_per_batch=num_envs * segment_length,
        total_frames=total_frames,
        **kwargs,
    )


def make_optimizer(
    params, lr: float = 6e-4, alpha: float = 0.99, eps: float = 0.01, momentum: float = 0.0
) -> torch.optim.RMSprop:
    """RMSProp with the paper's settings (lr 6e-4, α 0.99, ε 0.01; IMPALA/torchbeast)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum)


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
    collector: Collector,
    loss_module: LossModule,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    max_grad_norm: float | None = 40.0,
    log_every: int = 0,
) -> list[dict[str, float]]:
    """Run ``collector`` to the end, one update per batch; returns per-update metrics
    (plus ``frames`` and the mean ``episode_return`` of episodes finished in that batch, if any)."""
    history, frames = [], 0
    for i, batch in enumerate(collector):
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
