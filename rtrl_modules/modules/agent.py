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
``"prev_reward"``   [*, 1] float            previous step's reward (0 at reset, or the last
                                            episode's last reward), from :class:`PreviousReward`;
                                            clipped to [-1, 1]
``"embed"``         [*, 257]                stem output (256) with the clipped previous reward
``"features"``      [*, N]                  core output (eLSTM: σ(O[x; c] + b) ⊙ c)
``"logits"``        [*, A]                  policy logits; ``"action"`` [*] int64 and
                                            ``"action_log_prob"`` [*] come from the actor
``"state_value"``   [*, 1]                  value head
==================  ======================  ==================================================

The previous action is not an input (the paper's D = 256 + 1). The official code's settings that
differ from the defaults here are options of :func:`make_agent` (``init="official"``,
``embed_size=None`` for ProcGen's FC of ``hidden_size`` units, ``feedforward_layer=False``,
``conv_scale``, ``stem_parts="conv"``, ``freeze_stem="conv" | "fc"``); see docs/fidelity.md. Cheaper
pixel stems for CPU-sized runs: ``stem="nature"`` (DQN Nature CNN) or ``"shallow"`` (IMPALA's shallow
model); the IMPALA ResNet (``"impala"``) is the default.
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


class PixelStem(nn.Module):
    """Base of the pixel stems: ``conv`` (convolutions, ReLU, flatten) then ``fc`` (Linear, ReLU).

    Input [..., C, H, W] (or [..., H, W, C] with ``channels_last``; uint8 pixels are scaled to
    [0, 1]); output [..., out_features]. Subclasses build ``self.conv`` and ``self.fc`` (the parts
    :func:`freeze_stem_parts` and :func:`load_stem` address) after :meth:`_input_layout`.
    """

    def _input_layout(self, observation_shape: Sequence[int], channels_last: bool) -> tuple[int, int, int]:
        """Check and store the observation layout; returns (C, H, W)."""
        if len(observation_shape) != 3:
            raise ValueError(
                f"{type(self).__name__} needs a (C, H, W) observation shape, got {tuple(observation_shape)}"
            )
        if channels_last:
            height, width, in_channels = observation_shape
        else:
            in_channels, height, width = observation_shape
        self.observation_shape, self.channels_last = tuple(observation_shape), channels_last
        return in_channels, height, width

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.shape[-3:] != self.observation_shape:
            layout = ", ".join(map(str, self.observation_shape))
            raise ValueError(
                f"{type(self).__name__} expects observations [..., {layout}], got {tuple(pixels.shape)}"
            )
        lead = pixels.shape[:-3]
        x = pixels.reshape(-1, *pixels.shape[-3:])
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        dtype = self.fc[0].weight.dtype
        x = x.to(dtype) / 255.0 if not x.is_floating_point() else x.to(dtype)
        return self.fc(self.conv(x)).reshape(*lead, self.out_features)


class ImpalaStem(PixelStem):
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
        in_channels, height, width = self._input_layout(observation_shape, channels_last)
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


class PlainConvStem(PixelStem):
    """Plain strided convolutions (no padding), each followed by ReLU; flatten; FC; ReLU.

    Args:
        observation_shape: (C, H, W), or (H, W, C) with ``channels_last=True``.
        channels, kernels, strides: one entry per convolution.
        out_features: size of the FC layer.
        channels_last: the input is [..., H, W, C]; it is permuted.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        channels: Sequence[int],
        kernels: Sequence[int],
        strides: Sequence[int],
        out_features: int = 256,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not len(channels) == len(kernels) == len(strides):
            raise ValueError(
                f"{type(self).__name__}: got {len(channels)} channels for {len(kernels)} kernels and "
                f"{len(strides)} strides (one each per convolution)"
            )
        in_channels, height, width = self._input_layout(observation_shape, channels_last)
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in zip(channels, kernels, strides):
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride=stride), nn.ReLU()]
            in_channels = out_channels
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            if height < 1 or width < 1:
                raise ValueError(
                    f"{type(self).__name__}: observations of shape {tuple(observation_shape)} are too "
                    "small for its convolutions"
                )
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(in_channels * height * width, out_features), nn.ReLU())
        self.out_features = out_features


class NatureStem(PlainConvStem):
    """The DQN Nature CNN (Mnih et al., 2015): conv 8×8/4, 4×4/2, 3×3/1 (32, 64, 64 channels), FC.

    Multiply-adds per frame: 8.5M on 84×84×4 (:class:`ImpalaStem`: 54M), 3.4M on 64×64×3 (31M).
    FC of ``out_features`` (the DQN's 512; here 256 by default, like the IMPALA stem, so D = 257).
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 64),
        out_features: int = 256,
        channels_last: bool = False,
    ) -> None:
        super().__init__(observation_shape, channels, (8, 4, 3), (4, 2, 1), out_features, channels_last)


class ShallowStem(PlainConvStem):
    """IMPALA's "shallow" model (Espeholt et al., 2018; the 2013 DQN network): conv 8×8/4, 4×4/2
    (16, 32 channels), FC 256. Multiply-adds per frame: 3.0M on 84×84×4 (:class:`ImpalaStem`: 54M),
    1.3M on 64×64×3 (31M)."""

    def __init__(
        self,
        observation_shape: Sequence[int],
        channels: Sequence[int] = (16, 32),
        out_features: int = 256,
        channels_last: bool = False,
    ) -> None:
        super().__init__(observation_shape, channels, (8, 4), (4, 2), out_features, channels_last)


#: pixel stems of :func:`make_agent`: name -> (class, its default channels)
STEMS: dict[str, tuple[type[PixelStem], tuple[int, ...]]] = {
    "impala": (ImpalaStem, (16, 32, 32)),
    "nature": (NatureStem, (32, 64, 64)),
    "shallow": (ShallowStem, (16, 32)),
}


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


#: stem initialisations of :func:`make_agent` (see :func:`init_stem`)
STEM_INITS: tuple[str, ...] = ("default", "orthogonal")


def init_stem(stem: nn.Module, kind: str = "orthogonal", gain: float = math.sqrt(2)) -> nn.Module:
    """Initialise the stem's convolutions and linear layers in place; returns ``stem``.

    ``"default"`` keeps PyTorch's (Kaiming-uniform with a = √5, which shrinks the signal at every
    layer: on Pong frames a fresh shallow or Nature stem's outputs are ~0.01). ``"orthogonal"`` uses
    orthogonal weights of ``gain`` √2 and zero biases (A2C's and CleanRL's Atari networks): outputs
    ~0.1-0.25 on the same frames.
    """
    if kind not in STEM_INITS:
        raise ValueError(f"unknown stem_init {kind!r}; valid choices are {', '.join(STEM_INITS)}")
    if kind == "orthogonal":
        for layer in stem.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(layer.weight, gain)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return stem


STEM_PARTS: tuple[str, ...] = ("all", "conv")
FREEZE_CHOICES: tuple[bool | str, ...] = (False, True, "all", "conv", "fc")


def stem_parts(stem: nn.Module, parts: str) -> nn.Module | None:
    """The sub-module of ``stem`` named by ``parts``: ``"all"`` (the stem), ``"conv"`` (its
    convolutions, ``stem.conv``) or ``"fc"`` (the FC layer after them, ``stem.fc``); None if absent."""
    if parts == "all":
        return stem
    if parts not in ("conv", "fc"):
        raise ValueError(f"unknown stem part {parts!r}; valid choices are all, conv, fc")
    return getattr(stem, parts, None)


def freeze_stem_parts(stem: nn.Module, which: bool | str = True) -> nn.Module:
    """Freeze the stem's ``which`` part: True / ``"all"`` (conv and FC), ``"conv"``, ``"fc"``;
    False freezes nothing. The official code's ``--freeze_conv`` / ``--freeze_fc`` are the last two."""
    if which not in FREEZE_CHOICES:
        raise ValueError(f"unknown freeze_stem {which!r}; valid choices are False, True, all, conv, fc")
    if which is False:
        return stem
    part = stem_parts(stem, "all" if which is True else which)
    if part is None:
        raise ValueError(f"freeze_stem={which!r}: {type(stem).__name__} has no {which!r} part")
    part.requires_grad_(False)
    return stem


def load_stem(
    stem: nn.Module,
    checkpoint: str | Path | Mapping[str, Tensor],
    freeze: bool | str = True,
    parts: str = "all",
) -> nn.Module:
    """Load ``stem``'s weights from a checkpoint and optionally freeze them (paper's DMLab setting).

    ``checkpoint`` is a path to ``torch.save``d weights or a mapping: the stem's own ``state_dict``,
    a dict holding it under ``"stem"``, a larger state dict holding the stem's keys under one
    prefix (e.g. ``agent.actor.state_dict()``), or an official-code checkpoint (its
    ``"model_state_dict"``, converted by :func:`rtrl_modules.modules.official.convert_stem`).
    ``parts``: ``"all"`` loads conv and FC, ``"conv"`` the convolutions only (official
    ``--not_load_fc``). ``freeze``: see :func:`freeze_stem_parts`.
    """
    if parts not in STEM_PARTS:
        raise ValueError(f"unknown stem_parts {parts!r}; valid choices are {', '.join(STEM_PARTS)}")
    state = torch.load(checkpoint, map_location="cpu") if isinstance(checkpoint, (str, Path)) else checkpoint
    if not isinstance(state, Mapping):
        raise TypeError(f"stem checkpoint must hold a state dict, got {type(state).__name__}")
    from .official import convert_stem, is_official_state_dict

    if is_official_state_dict(state):
        state = convert_stem(state.get("model_state_dict", state))
    if "stem" in state and isinstance(state["stem"], Mapping):
        state = state["stem"]
    own = set(stem.state_dict())
    if parts == "conv":
        own = {k for k in own if k.startswith("conv.")}
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
    stem.load_state_dict({k: state[k] for k in own}, strict=parts == "all")
    return freeze_stem_parts(stem, freeze)


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
    policy_head: nn.Module | None = None  # Linear(features, A)
    value_head: nn.Module | None = None  # Linear(features, 1)


def make_agent(
    observation_shape: Sequence[int],
    num_actions: int,
    *,
    core: str = "rtrl",
    hidden_size: int = 256,
    embed_size: int | None = 256,
    observation_key: NestedKey | None = None,
    prev_reward_key: NestedKey | None = "prev_reward",
    reward_clip: float = 1.0,
    stem: str = "impala",
    stem_init: str = "default",
    channels: Sequence[int] | None = None,
    conv_scale: int = 1,
    channels_last: bool = False,
    output_gate: bool = True,
    init: str = "default",
    feedforward_layer: bool = True,
    stem_checkpoint: str | Path | Mapping[str, Tensor] | None = None,
    stem_parts: str = "all",
    freeze_stem: bool | str = False,
    **core_kwargs,
) -> Agent:
    """Build the paper's actor-critic for pixel ((C, H, W)) or vector ((D,)) observations.

    Args:
        observation_shape: (C, H, W) pixels (the ``stem``), (H, W, C) with ``channels_last``, or (D,)
            for a vector (MLP stem).
        num_actions: size of the discrete action set.
        core: one of ``RECURRENT_KINDS`` (``"rtrl"``, ``"rtrl_stepwise"``, ``"tbptt"``, ``"lstm"``,
            ``"feedforward"``).
        hidden_size: recurrent size N. embed_size: stem output (256); D = embed_size + 1. None: the
            FC has ``hidden_size`` units (the official ProcGen network; D = N + 1).
        observation_key: default ``"pixels"`` for images, ``"observation"`` for vectors.
        prev_reward_key: key of the previous reward (see :class:`PreviousReward`); None drops it
            (D = embed_size).
        stem: the pixel stem, one of ``STEMS``: ``"impala"`` (the paper's IMPALA ResNet,
            :class:`ImpalaStem`), ``"nature"`` (the DQN Nature CNN, :class:`NatureStem`; 6× fewer
            multiply-adds on 84×84×4 frames) or ``"shallow"`` (IMPALA's shallow model,
            :class:`ShallowStem`; 18× fewer). Vector observations get the MLP stem (another choice
            than the default is an error).
        stem_init: ``"default"`` (PyTorch's) or ``"orthogonal"`` (gain √2, zero biases; see
            :func:`init_stem`); a ``stem_checkpoint`` replaces either.
        channels, conv_scale: the stem's channels per section / convolution (None: the stem's own,
            16-32-32 for IMPALA), each multiplied by ``conv_scale`` (the official ``--conv_scale``).
        init: the eLSTM's initialisation, ``"default"`` (U(±1/√N)) or ``"official"`` (N(0, 0.1²)).
        feedforward_layer: for ``core="feedforward"``: True adds Linear(D, N) + ReLU before the heads;
            False is the official baseline, heads directly on the D-dim [stem; prev reward].
        stem_checkpoint: weights to load into the stem (ours or an official checkpoint);
            ``stem_parts="conv"`` loads the convolutions only; ``freeze_stem``: False, True / "all"
            (conv and FC), "conv" or "fc" (see :func:`freeze_stem_parts`).
        core_kwargs: passed to :func:`make_recurrent_module` (e.g. ``slot_key``).
    """
    if core not in RECURRENT_KINDS:
        raise ValueError(f"unknown core {core!r}; valid choices are {', '.join(RECURRENT_KINDS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid choices are {', '.join(STEMS)}")
    if num_actions < 1:
        raise ValueError(f"num_actions must be positive, got {num_actions}")
    if conv_scale < 1:
        raise ValueError(f"conv_scale must be >= 1, got {conv_scale}")
    if freeze_stem not in FREEZE_CHOICES:
        raise ValueError(f"unknown freeze_stem {freeze_stem!r}; valid choices are False, True, all, conv, fc")
    embed_size = hidden_size if embed_size is None else embed_size
    shape = tuple(int(s) for s in observation_shape)
    if len(shape) == 3:
        stem_class, stem_channels = STEMS[stem]
        channels = tuple(c * conv_scale for c in (stem_channels if channels is None else channels))
        stem_module: nn.Module = stem_class(shape, channels, embed_size, channels_last=channels_last)
        observation_key = "pixels" if observation_key is None else observation_key
    elif len(shape) == 1:
        if stem != "impala":
            raise ValueError(f"stem={stem!r} is for pixels; vector observations {shape} get an MLP stem")
        stem_module = MLPStem(shape[0], embed_size)
        observation_key = "observation" if observation_key is None else observation_key
    else:
        raise ValueError(f"observation_shape must be (C, H, W), (H, W, C) or (D,), got {shape}")
    init_stem(stem_module, stem_init)
    if stem_checkpoint is not None:
        load_stem(stem_module, stem_checkpoint, freeze=freeze_stem, parts=stem_parts)
    elif freeze_stem:
        raise ValueError(
            "freeze_stem needs stem_checkpoint (freezing random weights is almost surely a mistake)"
        )

    modules = [TensorDictModule(stem_module, in_keys=[observation_key], out_keys=["embed_obs"])]
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
        init=init,
        feedforward_layer=feedforward_layer,
        **core_kwargs,
    )
    trunk = TensorDictSequential(*modules, recurrent)
    features = getattr(recurrent, "output_size", hidden_size)
    policy, value = nn.Linear(features, num_actions), nn.Linear(features, 1)
    policy_head = TensorDictModule(policy, in_keys=["features"], out_keys=["logits"])
    value_head = TensorDictModule(value, in_keys=["features"], out_keys=["state_value"])

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
    return Agent(
        actor=actor,
        critic=critic,
        trunk=trunk,
        core=recurrent,
        stem=stem_module,
        network=network,
        policy_head=policy,
        value_head=value,
    )


# ---------------------------------------------------------------------------------------------- env side
def _previous_reward_base():
    from torchrl.envs import TensorDictPrimer

    return TensorDictPrimer


PREV_REWARD_AT_RESET: tuple[str, ...] = ("zero", "last")


class PreviousReward(_previous_reward_base()):
    """Env transform writing the last reward as an observation: ``"prev_reward"`` [*B, 1].

    A ``TensorDictPrimer`` (so reset, specs and partial resets behave like a recurrent state) whose
    step copies ``("next", "reward")`` into ``("next", "prev_reward")``; the collector's step_mdp then
    brings it to the root, where the agent reads it. Clipping happens in the agent.

    ``at_reset``: what an episode's first step reads. ``"zero"`` (default); ``"last"``: the reward
    of the previous episode's last step, as the official code's actors pass it. The transform keeps
    the last reward of each env for this (a partial reset does not show it the finished step); a full
    ``env.reset()`` (no ``"_reset"`` mask) starts from 0, like the official ``initial()``.
    """

    def __init__(
        self, in_key: NestedKey = "reward", out_key: NestedKey = "prev_reward", at_reset: str = "zero"
    ) -> None:
        from torchrl.data import Unbounded

        if at_reset not in PREV_REWARD_AT_RESET:
            raise ValueError(
                f"unknown at_reset {at_reset!r}; valid choices are {', '.join(PREV_REWARD_AT_RESET)}"
            )
        super().__init__({out_key: Unbounded(shape=(1,))}, expand_specs=True)
        self.reward_key, self.prev_reward_key, self.at_reset = in_key, out_key, at_reset
        self._last_reward: Tensor | None = None  # [*B, 1], "last" mode only

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        tensordict_reset = super()._reset(tensordict, tensordict_reset)
        if self.at_reset != "last":
            return tensordict_reset
        partial = tensordict is not None and tensordict.get("_reset", None) is not None
        if partial and self._last_reward is not None:
            # continuing envs are not updated by a partial reset; the reset ones get their last reward
            tensordict_reset.set(self.prev_reward_key, self._last_reward.clone())
        else:
            self._last_reward = None
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict = super()._step(tensordict, next_tensordict)
        reward = next_tensordict.get(self.reward_key).reshape(*next_tensordict.shape, 1).to(torch.float32)
        if self.at_reset == "last":
            self._last_reward = reward.detach().clone()
        return next_tensordict.set(self.prev_reward_key, reward)
