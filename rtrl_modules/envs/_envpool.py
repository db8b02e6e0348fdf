"""A thin TorchRL ``EnvBase`` over envpool's batched C++ engines (Atari, ProcGen).

Why our own wrapper: TorchRL's ``MultiThreadedEnv`` needs the old ``gym`` package and ``treevalue``;
this one talks to envpool's gymnasium API directly and gives TorchRL's done -> reset semantics.

envpool auto-resets an env on the step *after* it reported done (that step's action is ignored and
its "transition" links the last frame of one episode to the first of the next). This wrapper never
lets that happen: when an env reports done it is marked, and TorchRL's partial reset (the ``"_reset"``
mask collectors pass) calls ``pool.reset(env_ids)`` on exactly those envs, which envpool serves
immediately. Every transition a collector records is therefore a real one, and ``step()`` on an env
that is done and not yet reset raises instead of silently producing a reset transition.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from rtrl_modules.envs._common import done_spec, reset_mask

__all__ = ["EnvPoolEnv", "import_envpool"]


def import_envpool():
    """Import envpool or raise an ``ImportError`` that says how to install it."""
    try:
        import envpool
    except ImportError:
        raise ImportError(
            "envpool is not installed; Atari and ProcGen need it: pip install 'rtrl-modules[atari,procgen]'"
        ) from None
    return envpool


class EnvPoolEnv(EnvBase):
    """Batched envpool engine as a TorchRL env.

    Args:
        task_id: envpool task id, e.g. ``"Pong-v5"`` or ``"ChaserHard-v0"``.
        num_envs: batch size B.
        seed: engine seed (env i gets ``seed + i`` inside envpool).
        episodic_life: report a lost life as ``terminated`` while the game goes on; the next reset
            of that env does not reset the game (Atari only; DeepMind's training convention).
        info_keys: integer ``info`` entries to expose as ``[B]`` int64 keys (e.g. ``"level_seed"``).
        engine_kwargs: passed to ``envpool.make_gymnasium``.

    Keys: ``"pixels"`` uint8 ``[B, C, H, W]`` (0..255, channel-first), ``"action"`` int64 ``[B]``
    (``Categorical``), ``"reward"`` float32 ``[B, 1]`` (raw), ``"done"``/``"terminated"``/``"truncated"``
    bool ``[B, 1]``.
    """

    def __init__(
        self,
        task_id: str,
        num_envs: int,
        *,
        seed: int = 0,
        episodic_life: bool = False,
        info_keys: tuple[str, ...] = (),
        **engine_kwargs: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.task_id, self.episodic_life, self.info_keys = task_id, episodic_life, tuple(info_keys)
        self._engine_kwargs = dict(engine_kwargs)
        super().__init__(batch_size=torch.Size([num_envs]), device="cpu")
        self._make_pool(seed)
        bs = self.batch_size
        obs_shape = tuple(self._pool.observation_space.shape)
        specs = {"pixels": Bounded(0, 255, shape=(*bs, *obs_shape), dtype=torch.uint8)}
        for key in self.info_keys:
            specs[key] = Unbounded(shape=bs, dtype=torch.int64)
        self.observation_spec = Composite(specs, shape=bs)
        self.action_spec = Categorical(int(self._pool.action_space.n), shape=bs)
        self.reward_spec = Unbounded(shape=(*bs, 1))
        self.done_spec = done_spec(bs)
        n = num_envs
        # numpy buffers: torch's multi-threaded copies stall against envpool's busy worker threads
        self._pixels = np.zeros((n, *obs_shape), dtype=np.uint8)
        self._info = {key: np.zeros(n, dtype=np.int64) for key in self.info_keys}
        self._lives = np.zeros(n, dtype=np.int64)
        self._needs_reset = np.ones(n, dtype=bool)  # done, waiting for reset
        self._game_over = np.ones(n, dtype=bool)  # the engine itself must be reset

    def _make_pool(self, seed: int) -> None:
        envpool = import_envpool()
        self._pool = envpool.make_gymnasium(
            self.task_id, num_envs=self.batch_size[0], seed=int(seed), **self._engine_kwargs
        )

    def _write(self, env_id: np.ndarray, obs: np.ndarray, info: dict) -> None:
        """Copy engine output (rows ordered by ``env_id``) into our buffers; envpool reuses its memory."""
        self._pixels[env_id] = obs
        for key in self.info_keys:
            self._info[key][env_id] = info[key]
        if "lives" in info:
            self._lives[env_id] = info["lives"]

    def _out(self) -> dict[str, torch.Tensor]:
        out = {"pixels": torch.from_numpy(self._pixels.copy())}
        out.update({key: torch.from_numpy(value.copy()) for key, value in self._info.items()})
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = reset_mask(tensordict, self.batch_size).numpy()
        if tensordict is None or "_reset" not in tensordict.keys():
            self._game_over[:] = True  # a plain reset() restarts every game
        engine = np.nonzero(mask & self._game_over)[0].astype(np.int32)
        if len(engine) == len(mask):
            obs, info = self._pool.reset()
        elif len(engine):
            obs, info = self._pool.reset(engine)
        if len(engine):
            self._write(np.asarray(info["env_id"]), obs, info)
        # envs that only lost a life (episodic_life) keep playing from their current frame
        self._game_over[engine] = False
        self._needs_reset[mask] = False
        zeros = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        out = self._out()
        out.update(done=zeros, terminated=zeros.clone(), truncated=zeros.clone())
        return TensorDict(out, batch_size=self.batch_size)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._needs_reset.any():
            ids = np.nonzero(self._needs_reset)[0].tolist()
            raise RuntimeError(
                f"step() on envs {ids} that are done and not reset; call reset() with a '_reset' mask "
                "(TorchRL collectors and rollout() do this). Stepping them would feed envpool's "
                "auto-reset transition, whose action is ignored."
            )
        action = tensordict.get("action")
        if action.shape != self.batch_size:
            raise ValueError(
                f"expected a categorical action of shape {tuple(self.batch_size)}, "
                f"got {tuple(action.shape)} (one-hot actions are not accepted)"
            )
        lives_before = self._lives.copy()
        obs, reward, terminated, truncated, info = self._pool.step(action.numpy().astype(np.int32))
        env_id = np.asarray(info["env_id"])
        order = np.argsort(env_id)
        reward, terminated, truncated = reward[order], terminated[order], truncated[order]
        self._write(env_id, obs, info)
        game_over = terminated | truncated
        if self.episodic_life:
            terminated = terminated | ((self._lives < lives_before) & ~game_over)
        done = terminated | truncated
        self._needs_reset = done.copy()
        self._game_over = game_over.copy()
        out = self._out()
        out.update(
            reward=torch.from_numpy(reward.astype(np.float32)).unsqueeze(-1),
            done=torch.from_numpy(done).unsqueeze(-1),
            terminated=torch.from_numpy(terminated.astype(bool)).unsqueeze(-1),
            truncated=torch.from_numpy(truncated.astype(bool)).unsqueeze(-1),
        )
        return TensorDict(out, batch_size=self.batch_size)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:  # envpool seeds at construction: rebuild the engine
            if hasattr(self._pool, "close"):
                self._pool.close()
            self._make_pool(seed)
            self._needs_reset[:] = True
            self._game_over[:] = True

    def close(self, *, raise_if_closed: bool = True) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and hasattr(pool, "close"):
            pool.close()
        super().close(raise_if_closed=raise_if_closed)
