"""The paper's agent (Irie et al., 2024, after IMPALA): stem → [embed; clipped prev reward] → core → heads.

    agent = make_agent(observation_shape=(3, 64, 64), num_actions=15, core="rtrl", hidden_size=256)
    env = TransformedEnv(env, Compose(InitTracker(), PreviousReward(), agent.core.make_tensordict_primer()))
    loss = ClipPPOLoss(agent.actor, agent.critic)        # or A2CLoss, or the R2AC V-trace loss

Keys (all configurable in :func:`make_agent`):

==================  ======================  ==================================================
key                 shape                   meaning
==================  ======================  ==================================================
``"pixels"``        [*, C, H, W] uint8      image observation (scaled to [0, 1]); ``"observation"``
                                            [*, D] float for vector observations
``"prev_reward"``   [*, 1] float            previous step's reward (0 at reset), from
                                            :class:`PreviousReward`; clipped to [-1, 1]
``"embed"``         [*, 257]                stem output (256) with the clipped previous reward
``"features"``      [*, N]                  core output (eLSTM: σ(O[x; c] + b) ⊙ c)
``"logits"``        [*, A]                  policy logits; ``"action"`` [*] int64 and
                                            ``"action_log_prob"`` [*] come from the actor
``"state_value"``   [*, 1]                  value head
==================  ======================  ==================================================

The previous action is not an input (the paper's D = 256 + 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from tensordict.utils import NestedKey
from torch import Tensor, nn

from .baselines import RECURRENT_KINDS, make_recurrent_module


# ---------------------------------------------------------------------------------------------- stems
class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3×3 convs, same channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaStem(nn.Module):
    """IMPALA ResNet: per section conv3×3 → max-pool 3/2 → 2 residual blocks; ReLU; FC; ReLU.

    Args:
        observation_shape: (C, H, W), or (H, W, C) with ``channels_last=True``.
        channels: channels of each section (paper: 16, 32, 32).
        out_features: size of the FC layer (paper: 256).
        channels_last: the input is [..., H, W, C] (e.g. raw gymnasium frames); it is permuted.
    Input [..., C, H, W] (uint8 pixels are scaled to [0, 1]); output [..., out_features].
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        channels: Sequence[int] = (16, 32, 32),
        out_features: int = 256,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if len(observation_shape) != 3:
            raise ValueError(
                f"ImpalaStem needs a (C, H, W) observation shape, got {tuple(observation_shape)}"
            )
        if channels_last:
            height, width, in_channels = observation_shape
        else:
            in_channels, height, width = observation_shape
        self.observation_shape, self.channels_last = tuple(observation_shape), channels_last
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                ResidualBlock(out_channels),
                ResidualBlock(out_channels),
            ]
            in_channels = out_channels
            height, width = math.floor((height - 1) / 2) + 1, math.floor((width - 1) / 2) + 1
        self.conv = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(in_channels * height * width, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.shape[-3:] != self.observation_shape:
            raise ValueError(
                f"ImpalaStem expects observations [..., {', '.join(map(str, self.observation_shape))}], "
                f"got {tuple(pixels.shape)}"
            )
        lead = pixels.shape[:-3]
        x = pixels.reshape(-1, *pixels.shape[-3:])
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        dtype = self.fc[0].weight.dtype
        x = x.to(dtype) / 255.0 if not x.is_floating_point() else x.to(dtype)
        return self.fc(self.conv(x)).reshape(*lead, self.out_features)


class MLPStem(nn.Module):
    """Vector-observation stem: Linear → ReLU, [..., D] → [..., out_features]."""

    def __init__(self, observation_size: int, out_features: int = 256) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(observation_size, out_features), nn.ReLU())
        self.out_features = out_features

    def forward(self, observation: Tensor) -> Tensor:
        return self.fc(observation.to(self.fc[0].weight.dtype))


class ConcatPrevReward(nn.Module):
    """[embed; clip(prev_reward, -c, c)]: [..., E] and [..., 1] → [..., E + 1]."""

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, embed: Tensor, prev_reward: Tensor) -> Tensor:
        if prev_reward.shape[-1:] != (1,) or prev_reward.dim() != embed.dim():
            prev_reward = prev_reward.reshape(*embed.shape[:-1], 1)
        return torch.cat((embed, prev_reward.to(embed.dtype).clamp(-self.clip, self.clip)), dim=-1)


def load_stem(
    stem: nn.Module, checkpoint: str | Path | Mapping[str, Tensor], freeze: bool = True
) -> nn.Module:
    """Load ``stem``'s weights from a checkpoint and optionally freeze them (paper's DMLab setting).

    ``checkpoint`` is a path to ``torch.save``d weights or a mapping: the stem's own ``state_dict``,
    a dict holding it under ``"stem"``, or a larger state dict holding the stem's keys under one
    prefix (e.g. ``agent.actor.state_dict()``).
    """
    state = torch.load(checkpoint, map_location="cpu") if isinstance(checkpoint, (str, Path)) else checkpoint
    if not isinstance(state, Mapping):
        raise TypeError(f"stem checkpoint must hold a state dict, got {type(state).__name__}")
    if "stem" in state and isinstance(state["stem"], Mapping):
        state = state["stem"]
    own = set(stem.state_dict())
    if not own <= set(state):  # a larger checkpoint (e.g. the whole agent): find the stem's prefix
        probe = sorted(own)[0]
        for prefix in sorted({k[: -len(probe)] for k in state if k.endswith("." + probe)}, key=len):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if own <= set(sub):
                state = sub
                break
    missing = sorted(own - set(state))
    if missing:
        raise KeyError(
            f"stem checkpoint lacks {missing[:4]}{'...' if len(missing) > 4 else ''}; has {list(state)[:6]}"
        )
    stem.load_state_dict({k: state[k] for k in own})
    if freeze:
        stem.requires_grad_(False)
    return stem


# ---------------------------------------------------------------------------------------------- agent
@dataclass
class Agent:
    """The built agent: ``actor`` (ProbabilisticActor, Categorical) and ``critic`` share ``trunk``;
    ``network`` runs the trunk once and writes both ``logits`` and ``state_value`` (for ``R2ACLoss``)."""

    actor: TensorDictModuleBase
    critic: TensorDictSequential
    trunk: TensorDictSequential
    core: TensorDictModuleBase
    stem: nn.Module
    network: TensorDictSequential


def make_agent(
    observation_shape: Sequence[int],
    num_actions: int,
    *,
    core: str = "rtrl",
    hidden_size: int = 256,
    embed_size: int = 256,
    observation_key: NestedKey | None = None,
    prev_reward_key: NestedKey | None = "prev_reward",
    reward_clip: float = 1.0,
    channels: Sequence[int] = (16, 32, 32),
    channels_last: bool = False,
    output_gate: bool = True,
    stem_checkpoint: str | Path | Mapping[str, Tensor] | None = None,
    freeze_stem: bool = False,
    **core_kwargs,
) -> Agent:
    """Build the paper's actor-critic for pixel ((C, H, W)) or vector ((D,)) observations.

    Args:
        observation_shape: (C, H, W) pixels (IMPALA stem), (H, W, C) with ``channels_last``, or (D,)
            for a vector (MLP stem).
        num_actions: size of the discrete action set.
        core: one of ``RECURRENT_KINDS`` (``"rtrl"``, ``"rtrl_stepwise"``, ``"tbptt"``, ``"lstm"``,
            ``"feedforward"``).
        hidden_size: recurrent size N. embed_size: stem output (256); D = embed_size + 1.
        observation_key: default ``"pixels"`` for images, ``"observation"`` for vectors.
        prev_reward_key: key of the previous reward (see :class:`PreviousReward`); None drops it
            (D = embed_size).
        stem_checkpoint: weights to load into the stem; ``freeze_stem`` freezes conv and FC.
        core_kwargs: passed to :func:`make_recurrent_module` (e.g. ``slot_key``).
    """
    if core not in RECURRENT_KINDS:
        raise ValueError(f"unknown core {core!r}; valid choices are {', '.join(RECURRENT_KINDS)}")
    if num_actions < 1:
        raise ValueError(f"num_actions must be positive, got {num_actions}")
    shape = tuple(int(s) for s in observation_shape)
    if len(shape) == 3:
        stem: nn.Module = ImpalaStem(shape, channels, embed_size, channels_last=channels_last)
        observation_key = "pixels" if observation_key is None else observation_key
    elif len(shape) == 1:
        stem = MLPStem(shape[0], embed_size)
        observation_key = "observation" if observation_key is None else observation_key
    else:
        raise ValueError(f"observation_shape must be (C, H, W), (H, W, C) or (D,), got {shape}")
    if stem_checkpoint is not None:
        load_stem(stem, stem_checkpoint, freeze=freeze_stem)
    elif freeze_stem:
        raise ValueError(
            "freeze_stem=True needs stem_checkpoint (freezing random weights is almost surely a mistake)"
        )

    modules = [TensorDictModule(stem, in_keys=[observation_key], out_keys=["embed_obs"])]
    input_size = embed_size
    if prev_reward_key is not None:
        modules.append(
            TensorDictModule(
                ConcatPrevReward(reward_clip), in_keys=["embed_obs", prev_reward_key], out_keys=["embed"]
            )
        )
        input_size += 1
    else:
        modules.append(TensorDictModule(nn.Identity(), in_keys=["embed_obs"], out_keys=["embed"]))
    recurrent = make_recurrent_module(
        core,
        input_size,
        hidden_size,
        in_key="embed",
        out_key="features",
        output_gate=output_gate,
        **core_kwargs,
    )
    trunk = TensorDictSequential(*modules, recurrent)
    policy_head = TensorDictModule(
        nn.Linear(hidden_size, num_actions), in_keys=["features"], out_keys=["logits"]
    )
    value_head = TensorDictModule(nn.Linear(hidden_size, 1), in_keys=["features"], out_keys=["state_value"])

    from torchrl.modules import ProbabilisticActor

    actor = ProbabilisticActor(
        TensorDictSequential(trunk, policy_head),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = TensorDictSequential(trunk, value_head)
    network = TensorDictSequential(trunk, policy_head, value_head)
    return Agent(actor=actor, critic=critic, trunk=trunk, core=recurrent, stem=stem, network=network)


# ---------------------------------------------------------------------------------------------- env side
def _previous_reward_base():
    from torchrl.envs import TensorDictPrimer

    return TensorDictPrimer


class PreviousReward(_previous_reward_base()):
    """Env transform writing the last reward as an observation: ``"prev_reward"`` [*B, 1] (0 at reset).

    A ``TensorDictPrimer`` (so reset, specs and partial resets behave like a recurrent state) whose
    step copies ``("next", "reward")`` into ``("next", "prev_reward")``; the collector's step_mdp then
    brings it to the root, where the agent reads it. Clipping happens in the agent.
    """

    def __init__(self, in_key: NestedKey = "reward", out_key: NestedKey = "prev_reward") -> None:
        from torchrl.data import Unbounded

        super().__init__({out_key: Unbounded(shape=(1,))}, expand_specs=True)
        self.reward_key, self.prev_reward_key = in_key, out_key

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict = super()._step(tensordict, next_tensordict)
        reward = next_tensordict.get(self.reward_key)
        return next_tensordict.set(
            self.prev_reward_key, reward.reshape(*next_tensordict.shape, 1).to(torch.float32)
        )
