"""One factory for every suite, plus greedy evaluation helpers.

    env = make_env("memory", "delayed_cue", num_envs=32, delay=100)
    env = make_env("atari", "Pong", num_envs=8)
    env = make_env("procgen", "chaser", num_envs=8, distribution_mode="hard", level_set="train")

Every env is a ``TransformedEnv`` with ``InitTracker`` (``"is_init"`` bool ``[B, 1]``),
``StepCounter`` (``"step_count"`` int64 ``[B, 1]``) and ``RewardSum`` (``"episode_reward"`` float32
``[B, 1]``, the running return of the episode). Image suites emit ``"pixels"`` uint8 ``[B, C, H, W]``,
vector suites ``"observation"`` float32 ``[B, D]``; actions are ``Categorical`` int64 ``[B]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.envs import Compose, EnvBase, InitTracker, RewardSum, StepCounter, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type

from rtrl_modules.envs._common import check_choice, check_options
from rtrl_modules.envs.memory import MEMORY_TASKS, DelayedCueEnv

__all__ = [
    "EVAL_PROTOCOLS",
    "SUITES",
    "EvalSet",
    "evaluate",
    "evaluation_plan",
    "evaluate_procgen",
    "make_base_env",
    "make_env",
    "make_eval_env",
]

SUITES = ("atari", "procgen", "dmlab", "popgym", "memory")

#: final-evaluation protocols (see :func:`evaluation_plan`)
EVAL_PROTOCOLS: tuple[str, ...] = ("default", "official")
#: the official code's final evaluation (its ``full_test``): suite -> (runs, episodes per run);
#: ProcGen's runs are its level sets (``PROCGEN_EVAL_SETS["official"]``), the others' are seeds
OFFICIAL_EVALUATION: dict[str, tuple[int, int]] = {"procgen": (4, 200), "dmlab": (3, 100), "atari": (5, 30)}


@dataclass(frozen=True)
class EvalSet:
    """One part of a final evaluation: ``episodes`` greedy episodes with the evaluation env options
    ``options`` (ProcGen: ``{"level_set": name}``; repeated runs: ``{"run": k}``, a seed offset)."""

    name: str
    episodes: int
    options: dict[str, Any] = field(default_factory=dict)


def evaluation_plan(suite: str, protocol: str = "default", num_episodes: int | None = None) -> list[EvalSet]:
    """The final evaluation of ``suite`` under ``protocol``, as a list of :class:`EvalSet`.

    ``"default"``: ``num_episodes`` episodes, on each ProcGen level set of
    ``PROCGEN_EVAL_SETS["default"]`` (train = the 500 training levels), once elsewhere.
    ``"official"``: the official code's protocol: ProcGen 200 episodes on each of 200 levels from
    0 ("train_200"), 1000, 1200 and 1400; DMLab 3 runs (seeds) × 100 episodes; Atari 5 runs × 30;
    other suites as ``"default"``. ``num_episodes``, if given, replaces the per-set count.
    """
    check_choice("evaluation protocol", protocol, EVAL_PROTOCOLS)
    official = OFFICIAL_EVALUATION.get(suite) if protocol == "official" else None
    if official is None and num_episodes is None:
        raise ValueError(f"the {protocol!r} evaluation of suite {suite!r} needs num_episodes")
    episodes = num_episodes if num_episodes is not None else official[1]
    if episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {episodes}")
    if suite == "procgen":
        from rtrl_modules.envs.procgen import PROCGEN_EVAL_SETS

        return [EvalSet(name, episodes, {"level_set": name}) for name in PROCGEN_EVAL_SETS[protocol]]
    if official is not None:
        return [EvalSet(f"run_{k}", episodes, {"run": k}) for k in range(official[0])]
    return [EvalSet("", episodes)]


def _memory(task: str, num_envs: int, **options: Any) -> DelayedCueEnv:
    check_choice("memory task", task, MEMORY_TASKS)
    return DelayedCueEnv(num_envs, task=task, **options)


def _builder(suite: str) -> tuple[Callable[..., EnvBase], Callable[..., Any]]:
    """(builder, callable whose keyword-only parameters are the suite's options)."""
    if suite == "atari":
        from rtrl_modules.envs.atari import make_atari

        return make_atari, make_atari
    if suite == "procgen":
        from rtrl_modules.envs.procgen import make_procgen

        return make_procgen, make_procgen
    if suite == "dmlab":
        from rtrl_modules.envs.dmlab import DMLabEnv, make_dmlab

        return make_dmlab, DMLabEnv.__init__
    if suite == "popgym":
        from rtrl_modules.envs.popgym import make_popgym

        return make_popgym, make_popgym
    return _memory, DelayedCueEnv.__init__


def make_base_env(suite: str, task: str, num_envs: int = 1, **options: Any) -> EnvBase:
    """The suite's batched env without transforms (see ``make_env``)."""
    check_choice("environment suite", suite, SUITES)
    build, signature = _builder(suite)
    check_options(signature, options, suite)
    return build(task, num_envs, **options)


def make_env(suite: str, task: str, num_envs: int = 1, **options: Any) -> TransformedEnv:
    """Batched TorchRL env for ``suite``/``task`` with ``InitTracker``, ``StepCounter``, ``RewardSum``.

    Args:
        suite: ``"atari"``, ``"procgen"``, ``"dmlab"``, ``"popgym"`` or ``"memory"``.
        task: game / level / task name of the suite (unknown names raise ``ValueError`` with the choices).
        num_envs: batch size B.
        options: suite options (``seed`` everywhere; see ``make_atari``, ``make_procgen``, ``DMLabEnv``,
            ``make_popgym``, ``DelayedCueEnv``); unknown options raise ``ValueError``.

    Returns:
        ``TransformedEnv`` of batch size ``[B]``.
    """
    base = make_base_env(suite, task, num_envs, **options)
    transforms = [InitTracker(), StepCounter(), RewardSum()]
    if isinstance(base, TransformedEnv):  # popgym's GymWrapper already is one: extend it, don't nest
        for transform in transforms:
            base.append_transform(transform)
        return base
    return TransformedEnv(base, Compose(*transforms))


def make_eval_env(suite: str, task: str, num_envs: int = 1, **options: Any) -> TransformedEnv:
    """``make_env`` with the suite's evaluation protocol.

    Atari: full games (``episodic_life=False``), no-op starts kept. ProcGen: pass
    ``level_set="train" | "test_1000" | "test_1200" | "test_1400"`` (or num_levels/start_level).
    Other suites: same as training.
    """
    if suite == "atari":
        options["episodic_life"] = False
    return make_env(suite, task, num_envs, **options)


def evaluate(
    env: EnvBase,
    policy: Callable[[TensorDictBase], TensorDictBase],
    num_episodes: int,
    *,
    greedy: bool = True,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Run ``policy`` until ``num_episodes`` episodes finish; return their returns, float32 ``[N]``.

    ``env`` must come from ``make_env``/``make_eval_env`` (it reads ``"episode_reward"``). Greedy means
    ``ExplorationType.DETERMINISTIC`` (argmax for categorical actors). Every env slot contributes its
    first ``ceil(N / B)`` episodes (no bias towards short episodes); episodes are taken round-robin.
    A recurrent policy needs its primer in ``env``:
    ``env.append_transform(module.make_tensordict_primer())``.
    ``max_steps`` stops early (fewer than N returns then).
    """
    if ("next", "episode_reward") not in env.full_observation_spec.keys(True) and (
        "episode_reward" not in env.full_observation_spec.keys(True)
    ):
        raise ValueError("evaluate() needs an env from make_env()/make_eval_env() (no 'episode_reward' key)")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    n_envs = env.batch_size[0]
    per_env = math.ceil(num_episodes / n_envs)
    returns: list[list[float]] = [[] for _ in range(n_envs)]
    mode = ExplorationType.DETERMINISTIC if greedy else ExplorationType.RANDOM
    steps = 0
    with set_exploration_type(mode), torch.no_grad():
        td = env.reset()
        while min(len(r) for r in returns) < per_env:
            td = policy(td)
            td, next_td = env.step_and_maybe_reset(td)
            done = td.get(("next", "done")).reshape(n_envs)
            if done.any():
                ep_return = td.get(("next", "episode_reward")).reshape(n_envs)
                for i in done.nonzero().flatten().tolist():
                    if len(returns[i]) < per_env:
                        returns[i].append(float(ep_return[i]))
            td = next_td
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
    ordered = [r[j] for j in range(per_env) for r in returns if j < len(r)]
    return torch.tensor(ordered[:num_episodes], dtype=torch.float32)


def evaluate_procgen(
    policy: Callable[[TensorDictBase], TensorDictBase],
    game: str,
    *,
    num_envs: int = 8,
    num_episodes: int = 16,
    level_sets: Sequence[str] | None = None,
    greedy: bool = True,
    env_transform: Callable[[TransformedEnv], TransformedEnv] | None = None,
    **options: Any,
) -> dict[str, float]:
    """Mean greedy return on each ProcGen level set plus ``"test_mean"`` (mean over the test sets).

    ``level_sets``: default ``PROCGEN_EVAL_SETS["default"]``. ``env_transform`` may append
    transforms the policy needs (e.g. a recurrent primer).
    """
    from rtrl_modules.envs.procgen import PROCGEN_EVAL_SETS

    results: dict[str, float] = {}
    for name in level_sets or PROCGEN_EVAL_SETS["default"]:
        env = make_eval_env("procgen", game, num_envs, level_set=name, **options)
        if env_transform is not None:
            env = env_transform(env)
        results[name] = float(evaluate(env, policy, num_episodes, greedy=greedy).mean())
        env.close()
    tests = [v for k, v in results.items() if k.startswith("test")]
    if tests:
        results["test_mean"] = sum(tests) / len(tests)
    return results
