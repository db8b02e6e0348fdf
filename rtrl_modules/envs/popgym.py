"""popgym memory tasks as one batched TorchRL env.

B popgym envs run in one ``gymnasium.vector.SyncVectorEnv`` with same-step auto-reset, wrapped by
TorchRL's ``GymWrapper`` (which keeps the final observation of an episode in ``("next", ...)`` and
serves the new episode's first observation on TorchRL's partial reset), the fastest path measured on
this platform. Observations are flattened to float32 (discrete parts one-hot):
``"observation"`` float32 ``[B, D]``; actions are ``Categorical`` int64 ``[B]``.
"""

from __future__ import annotations

import numpy as np

from rtrl_modules.envs._common import check_choice

__all__ = ["POPGYM_DIFFICULTIES", "make_popgym", "popgym_tasks"]

POPGYM_DIFFICULTIES = ("easy", "medium", "hard")


def _import_popgym():
    try:
        import popgym.envs
    except ImportError:
        raise ImportError("popgym is not installed: pip install 'rtrl-modules[popgym]'") from None
    return popgym.envs


def popgym_tasks() -> list[str]:
    """popgym tasks that come in Easy/Medium/Hard, e.g. ``"RepeatFirst"``, ``"CountRecall"``."""
    envs = _import_popgym()
    names = {cls.__name__ for cls in envs.ALL_BASE}
    return sorted(n for n in names if all(hasattr(envs, n + d.capitalize()) for d in POPGYM_DIFFICULTIES))


def _flat_float_env(cls, antialias: bool):
    """One popgym env whose observation is flattened to a float32 vector (one-hot for discrete parts)."""
    import gymnasium as gym

    class FlatFloat(gym.ObservationWrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self._source = env.observation_space
            dim = gym.spaces.flatdim(self._source)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

        def observation(self, observation):
            return gym.spaces.flatten(self._source, observation).astype(np.float32)

    env = cls()
    if antialias:
        from popgym.wrappers import Antialias

        env = Antialias(env)
    return FlatFloat(env)


def make_popgym(
    task: str, num_envs: int = 1, *, difficulty: str = "easy", seed: int = 0, antialias: bool = False
):
    """Batched popgym env (a TorchRL ``GymWrapper``; use ``make_env("popgym", ...)`` for transforms).

    Args:
        task: e.g. ``"RepeatFirst"``, ``"repeat_previous"``, ``"CountRecallHard"`` (a difficulty suffix
            overrides ``difficulty``).
        num_envs: batch size B.
        difficulty: easy, medium or hard.
        seed: seed of the vector env's first reset.
        antialias: append popgym's "first step of the episode" flag to the observation.

    Returns:
        env with ``"observation"`` float32 ``[B, D]``, ``"action"`` int64 ``[B]``, ``"reward"`` ``[B, 1]``.
    """
    envs = _import_popgym()
    import gymnasium as gym
    from torchrl.envs import GymWrapper

    tasks = popgym_tasks()
    lookup = {t.lower(): t for t in tasks}
    key = task.replace("_", "").replace("-", "").lower()
    for d in POPGYM_DIFFICULTIES:
        if key.endswith(d) and key[: -len(d)] in lookup:
            key, difficulty = key[: -len(d)], d
    if key not in lookup:
        check_choice("popgym task", task, tasks)
    check_choice("popgym difficulty", difficulty.lower(), POPGYM_DIFFICULTIES)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    cls = getattr(envs, lookup[key] + difficulty.lower().capitalize())
    vec = gym.vector.SyncVectorEnv(
        [lambda: _flat_float_env(cls, antialias) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    env = GymWrapper(vec, categorical_action_encoding=True)
    env.set_seed(seed)
    return env
