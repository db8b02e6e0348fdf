"""Native batched memory tasks in pure torch (fast enough for CPU RL with RTRL).

``DelayedCueEnv`` is a T-maze-like task whose credit span is set by ``delay``:

    t = 0            the cue (one of ``num_cues``) is shown as a one-hot
    t = 1 .. d       blank steps (optional Gaussian noise and distractor cues)
    t = d + 1        decision step: the flag is on; the action is scored (+1 right, ``wrong_reward`` wrong)
                     and the episode terminates

so the reward depends on an observation seen ``d + 1`` steps earlier. Actions before the decision step
are ignored (reward 0). ``task="repeat_first"`` is the dense variant (like popgym's RepeatFirst): every
one of the ``d + 1`` steps is a decision step and pays ``±1 / (d + 1)`` for repeating the first cue.

Observation ``"observation"``: float32 ``[B, 2 * num_cues + 1]`` = ``[cue | distractor | decision flag]``.
Distractors appear in their own channels, so they never make the task ambiguous.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from rtrl_modules.envs._common import check_choice, done_spec, reset_mask

__all__ = ["MEMORY_TASKS", "DelayedCueEnv"]

MEMORY_TASKS = ("delayed_cue", "repeat_first")


class DelayedCueEnv(EnvBase):
    """Batched delayed-cue memory task (see module docstring).

    Args:
        num_envs: batch size B.
        task: ``"delayed_cue"`` (one scored decision at the end) or ``"repeat_first"`` (every step scored).
        delay: blank steps between cue and decision; an ``int`` or an inclusive ``(low, high)`` range
            sampled per episode.
        num_cues: number of cues = number of actions.
        noise: std of Gaussian noise added to every observation entry (0 = none).
        distractor_prob: probability that a blank step shows a random one-hot in the distractor channels.
        wrong_reward: reward for a wrong decision (right is +1).
        seed: seed of the env's own ``torch.Generator``.

    Keys: ``"observation"`` float32 ``[B, 2K+1]``, ``"action"`` int64 ``[B]`` (``Categorical(K)``),
    ``"reward"`` float32 ``[B, 1]``, ``"done"``/``"terminated"``/``"truncated"`` bool ``[B, 1]``.
    Partial resets follow TorchRL's ``"_reset"`` mask, so collectors auto-reset finished episodes.
    """

    def __init__(
        self,
        num_envs: int = 1,
        *,
        task: str = "delayed_cue",
        delay: int | tuple[int, int] = 20,
        num_cues: int = 2,
        noise: float = 0.0,
        distractor_prob: float = 0.0,
        wrong_reward: float = -1.0,
        seed: int = 0,
    ) -> None:
        check_choice("memory task", task, MEMORY_TASKS)
        low, high = (delay, delay) if isinstance(delay, int) else tuple(delay)
        if not (isinstance(low, int) and isinstance(high, int)) or not 0 <= low <= high:
            raise ValueError(
                f"delay must be an int >= 0 or a range (low, high) with 0 <= low <= high, got {delay}"
            )
        if num_cues < 2:
            raise ValueError(f"num_cues must be >= 2, got {num_cues}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 0.0 <= distractor_prob <= 1.0:
            raise ValueError(f"distractor_prob must be in [0, 1], got {distractor_prob}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        super().__init__(batch_size=torch.Size([num_envs]), device="cpu")
        self.task, self.delay_range, self.num_cues = task, (low, high), num_cues
        self.noise, self.distractor_prob, self.wrong_reward = (
            float(noise),
            float(distractor_prob),
            wrong_reward,
        )
        self.obs_dim = 2 * num_cues + 1
        self._gen = torch.Generator().manual_seed(seed)
        self._rows = torch.arange(num_envs)
        self._cue = torch.zeros(num_envs, dtype=torch.long)
        self._delay = torch.full((num_envs,), low, dtype=torch.long)
        self._t = torch.zeros(num_envs, dtype=torch.long)
        self._finished = torch.ones(num_envs, dtype=torch.bool)
        bs = self.batch_size
        self.observation_spec = Composite(observation=Unbounded(shape=(*bs, self.obs_dim)), shape=bs)
        self.action_spec = Categorical(num_cues, shape=bs)
        self.reward_spec = Unbounded(shape=(*bs, 1))
        self.done_spec = done_spec(bs)

    # -- internals ---------------------------------------------------------------------------------
    def _decision(self, t: torch.Tensor) -> torch.Tensor:
        """Whether step ``t`` is scored, bool ``[B]``."""
        if self.task == "delayed_cue":
            return t == self._delay + 1
        return t <= self._delay

    def _observe(self) -> torch.Tensor:
        """Observation of the current step, float32 ``[B, 2K+1]``."""
        k, t = self.num_cues, self._t
        obs = torch.zeros(self.batch_size[0], self.obs_dim)
        obs[self._rows, self._cue] = (t == 0).float()
        obs[:, -1] = self._decision(t).float()
        if self.distractor_prob > 0:
            shown = (torch.rand(t.shape, generator=self._gen) < self.distractor_prob) & (t > 0)
            which = torch.randint(k, t.shape, generator=self._gen)
            obs[self._rows, k + which] = shown.float()
        if self.noise > 0:
            obs.add_(torch.randn(obs.shape, generator=self._gen), alpha=self.noise)
        return obs

    # -- EnvBase API --------------------------------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = reset_mask(tensordict, self.batch_size)
        n = int(mask.sum())
        if n:
            low, high = self.delay_range
            self._cue[mask] = torch.randint(self.num_cues, (n,), generator=self._gen)
            self._delay[mask] = torch.randint(low, high + 1, (n,), generator=self._gen)
            self._t[mask] = 0
            self._finished[mask] = False
        zeros = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict(
            {
                "observation": self._observe(),
                "done": zeros,
                "terminated": zeros.clone(),
                "truncated": zeros.clone(),
            },
            batch_size=self.batch_size,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        if action.shape != self.batch_size:
            raise ValueError(
                f"expected a categorical action of shape {tuple(self.batch_size)}, "
                f"got {tuple(action.shape)} (one-hot actions are not accepted)"
            )
        if self._finished.any():
            ids = self._finished.nonzero().flatten().tolist()
            raise RuntimeError(f"step() on finished episodes {ids}; reset them with a '_reset' mask first")
        scored = self._decision(self._t)
        correct = action == self._cue
        reward = torch.where(scored, torch.where(correct, 1.0, self.wrong_reward), 0.0)
        if self.task == "repeat_first":
            reward = reward / (self._delay + 1)
            done = self._t == self._delay
        else:
            done = scored
        self._t += 1
        self._finished |= done
        done = done.unsqueeze(-1)
        return TensorDict(
            {
                "observation": self._observe(),
                "reward": reward.unsqueeze(-1).float(),
                "done": done,
                "terminated": done.clone(),
                "truncated": torch.zeros_like(done),
            },
            batch_size=self.batch_size,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._gen.manual_seed(seed)

    def episode_state(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue the running episodes exactly (for checkpoints)."""
        return {
            "cue": self._cue.clone(),
            "delay": self._delay.clone(),
            "t": self._t.clone(),
            "finished": self._finished.clone(),
            "generator": self._gen.get_state(),
        }

    def load_episode_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`episode_state` returned."""
        if state["cue"].shape != self._cue.shape:
            raise ValueError(
                f"episode state is for {state['cue'].shape[0]} envs, this env has {self._cue.shape[0]}"
            )
        for name in ("cue", "delay", "t", "finished"):
            getattr(self, f"_{name}").copy_(state[name])
        self._gen.set_state(state["generator"])

    def optimal_return(self) -> float:
        """Return of an agent that always answers right (1.0 for both tasks)."""
        return 1.0
