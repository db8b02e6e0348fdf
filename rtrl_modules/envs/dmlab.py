"""DeepMind Lab adapter (IMPALA settings) over the real ``deepmind_lab.Lab`` API.

NOT RUN AGAINST THE REAL ENGINE HERE: ``deepmind_lab`` cannot be installed on this platform (it needs a
Bazel build). The adapter is tested against a fake module that mimics the API surface used below:
``Lab(level, observations, config=..., renderer=..., level_cache=...)``, ``reset(seed=)``,
``observations()``, ``step(action, num_steps=)``, ``is_running()``, ``close()``.

``"pixels"`` uint8 ``[B, 3, 72, 96]`` (``RGB_INTERLEAVED`` transposed to channel-first), IMPALA's
9 discrete actions, each repeated 4 frames (``num_steps=4``; the rewards of the 4 frames are summed by
the engine). An episode ends when ``is_running()`` turns false (IMPALA treats this as terminal).
``frame_pool="max"`` returns the pixel-wise max of the last two of the repeated frames instead of
the last one, as the official code of the paper does (its ``dmlab_wrappers.create_env_dmlab``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from rtrl_modules.envs._common import check_choice, done_spec, reset_mask

__all__ = ["DMLAB30_LEVELS", "DMLabEnv", "FRAME_POOLS", "IMPALA_ACTION_SET", "make_dmlab"]

#: what an agent step observes of its repeated frames: the last one, or the max of the last two
FRAME_POOLS: tuple[str, ...] = ("last", "max")

#: DMLab-30 level names (under ``contributed/dmlab30/``); the paper uses the ``rooms_*`` memory ones.
DMLAB30_LEVELS: tuple[str, ...] = (
    "rooms_collect_good_objects_train",
    "rooms_collect_good_objects_test",
    "rooms_exploit_deferred_effects_train",
    "rooms_exploit_deferred_effects_test",
    "rooms_select_nonmatching_object",
    "rooms_watermaze",
    "rooms_keys_doors_puzzle",
    "language_select_described_object",
    "language_select_located_object",
    "language_execute_random_task",
    "language_answer_quantitative_question",
    "lasertag_one_opponent_small",
    "lasertag_three_opponents_small",
    "lasertag_one_opponent_large",
    "lasertag_three_opponents_large",
    "natlab_fixed_large_map",
    "natlab_varying_map_regrowth",
    "natlab_varying_map_randomized",
    "skymaze_irreversible_path_hard",
    "skymaze_irreversible_path_varied",
    "psychlab_arbitrary_visuomotor_mapping",
    "psychlab_continuous_recognition",
    "psychlab_sequential_comparison",
    "psychlab_visual_search",
    "explore_object_locations_small",
    "explore_object_locations_large",
    "explore_obstructed_goals_small",
    "explore_obstructed_goals_large",
    "explore_goal_locations_small",
    "explore_goal_locations_large",
    "explore_object_rewards_few",
    "explore_object_rewards_many",
)

#: IMPALA's action set. DMLab's 7 action dims: look left/right (pixels per frame), look down/up,
#: strafe left/right, move back/forward, fire, jump, crouch.
IMPALA_ACTION_SET: tuple[tuple[int, ...], ...] = (
    (0, 0, 0, 1, 0, 0, 0),  # forward
    (0, 0, 0, -1, 0, 0, 0),  # backward
    (0, 0, -1, 0, 0, 0, 0),  # strafe left
    (0, 0, 1, 0, 0, 0, 0),  # strafe right
    (-20, 0, 0, 0, 0, 0, 0),  # look left
    (20, 0, 0, 0, 0, 0, 0),  # look right
    (-20, 0, 0, 1, 0, 0, 0),  # look left + forward
    (20, 0, 0, 1, 0, 0, 0),  # look right + forward
    (0, 0, 0, 0, 1, 0, 0),  # fire
)

INSTALL_HINT = (
    "deepmind_lab is not installed. It must be built from source with Bazel: "
    "git clone https://github.com/google-deepmind/lab && cd lab && "
    "bazel build -c opt --python_version=PY3 //python/pip_package:build_pip_package && "
    "./bazel-bin/python/pip_package/build_pip_package /tmp/dmlab_pkg && "
    "pip install /tmp/dmlab_pkg/deepmind_lab-*.whl  (see docs/envs.md)"
)


def _import_lab():
    try:
        import deepmind_lab
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return deepmind_lab


def level_path(level: str) -> str:
    """Full DMLab level path for a DMLab-30 name (``contributed/dmlab30/<name>``)."""
    name = level.removeprefix("contributed/dmlab30/")
    check_choice("DMLab level", name, DMLAB30_LEVELS)
    return f"contributed/dmlab30/{name}"


class DMLabEnv(EnvBase):
    """B ``deepmind_lab.Lab`` instances stepped in turn, as one batched TorchRL env.

    Args:
        level: a DMLab-30 level name, e.g. ``"rooms_watermaze"``.
        num_envs: batch size B.
        seed: seeds the per-episode ``Lab.reset(seed=...)`` draws.
        action_repeat: frames per agent step (4).
        height, width: observation size (72, 96).
        renderer: ``"software"`` or ``"hardware"``.
        dataset_path: ``datasetPath`` for levels that need the Brady/LT image sets (psychlab, ...).
        config: extra ``Lab`` config entries (values are passed as strings).
        frame_pool: ``"last"`` (the last repeated frame) or ``"max"`` (pixel-wise max of the last
            two; the official code's setting).

    Keys: ``"pixels"`` uint8 ``[B, 3, H, W]``, ``"action"`` int64 ``[B]`` (``Categorical(9)``),
    ``"reward"`` float32 ``[B, 1]``, ``"done"``/``"terminated"``/``"truncated"`` bool ``[B, 1]``.
    """

    def __init__(
        self,
        level: str,
        num_envs: int = 1,
        *,
        seed: int = 0,
        action_repeat: int = 4,
        height: int = 72,
        width: int = 96,
        renderer: str = "software",
        dataset_path: str | None = None,
        config: dict[str, Any] | None = None,
        frame_pool: str = "last",
    ) -> None:
        path = level_path(level)
        check_choice("DMLab renderer", renderer, ("software", "hardware"))
        check_choice("DMLab frame_pool", frame_pool, FRAME_POOLS)
        if num_envs < 1 or action_repeat < 1:
            raise ValueError(f"num_envs and action_repeat must be >= 1, got {num_envs}, {action_repeat}")
        lab = _import_lab()
        super().__init__(batch_size=torch.Size([num_envs]), device="cpu")
        cfg = {"width": str(width), "height": str(height), "logLevel": "WARN"}
        if dataset_path is not None:
            cfg["datasetPath"] = dataset_path
        cfg.update({k: str(v) for k, v in (config or {}).items()})
        self.level, self.action_repeat, self.frame_pool = path, action_repeat, frame_pool
        self._labs = [
            lab.Lab(path, ["RGB_INTERLEAVED"], config=cfg, renderer=renderer) for _ in range(num_envs)
        ]
        self._actions = np.array(IMPALA_ACTION_SET, dtype=np.intc)
        self._rng = np.random.default_rng(seed)
        self._pixels = torch.zeros(num_envs, 3, height, width, dtype=torch.uint8)
        self._needs_reset = np.ones(num_envs, dtype=bool)
        bs = self.batch_size
        self.observation_spec = Composite(
            pixels=Bounded(0, 255, shape=(*bs, 3, height, width), dtype=torch.uint8), shape=bs
        )
        self.action_spec = Categorical(len(IMPALA_ACTION_SET), shape=bs)
        self.reward_spec = Unbounded(shape=(*bs, 1))
        self.done_spec = done_spec(bs)

    def _observe(self, i: int) -> None:
        frame = self._labs[i].observations()["RGB_INTERLEAVED"]  # [H, W, 3] uint8
        self._pixels[i] = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))

    def _act(self, i: int, action: np.ndarray) -> float:
        """Repeat ``action`` in env i; update its pixels unless the episode ended; return the reward."""
        lab = self._labs[i]
        if self.frame_pool == "last" or self.action_repeat == 1:
            reward = lab.step(action, num_steps=self.action_repeat)
            if lab.is_running():
                self._observe(i)
            return float(reward)
        reward = lab.step(action, num_steps=self.action_repeat - 1)
        if not lab.is_running():
            return float(reward)
        self._observe(i)
        second_last = self._pixels[i].clone()
        reward += lab.step(action, num_steps=1)
        if lab.is_running():
            self._observe(i)
            torch.maximum(self._pixels[i], second_last, out=self._pixels[i])
        return float(reward)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = reset_mask(tensordict, self.batch_size).numpy()
        for i in np.nonzero(mask)[0]:
            self._labs[i].reset(seed=int(self._rng.integers(0, 2**31 - 1)))
            self._observe(i)
        self._needs_reset[mask] = False
        zeros = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict(
            {
                "pixels": self._pixels.clone(),
                "done": zeros,
                "terminated": zeros.clone(),
                "truncated": zeros.clone(),
            },
            batch_size=self.batch_size,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._needs_reset.any():
            raise RuntimeError("step() on DMLab envs that are done and not reset; reset them first")
        action = tensordict.get("action")
        if action.shape != self.batch_size:
            raise ValueError(
                f"expected a categorical action of shape {tuple(self.batch_size)}, got {tuple(action.shape)}"
            )
        n = self.batch_size[0]
        reward = torch.zeros(n, 1)
        done = torch.zeros(n, 1, dtype=torch.bool)
        for i, a in enumerate(action.tolist()):
            reward[i] = self._act(i, self._actions[a])
            # no frame after the end: the last one stays (terminal, never bootstrapped from)
            done[i] = not self._labs[i].is_running()
        self._needs_reset = done.squeeze(-1).numpy().copy()
        return TensorDict(
            {
                "pixels": self._pixels.clone(),
                "reward": reward,
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros_like(done),
            },
            batch_size=self.batch_size,
        )

    def _set_seed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        for lab in getattr(self, "_labs", []):
            lab.close()
        super().close(raise_if_closed=raise_if_closed)


def make_dmlab(level: str, num_envs: int = 1, **options: Any) -> DMLabEnv:
    """Batched DMLab env (no transforms; use ``make_env("dmlab", ...)``). Options: see ``DMLabEnv``."""
    return DMLabEnv(level, num_envs, **options)
