"""R2AC: IMPALA's V-trace actor-critic whose recurrent core is trained by RTRL (Irie et al. 2024, §4).

The loss runs the agent network **once** over the [B, T] segment (in TorchRL's recurrent mode, so
an RTRL module consumes the whole segment, carries its sensitivities and gives exact, untruncated
gradients), bootstraps from the value of the observation after the segment, and returns

    loss_objective = −Σ_t log π(a_t | x_≤t) · ρ̄_t (r_t + γ_t v_{t+1} − V(x_t))       (advantage detached)
    loss_critic    = baseline_cost · ½ Σ_t (v_t − V(x_t))²                           (v_t: V-trace target)
    loss_entropy   = −entropy_cost · Σ_t H(π(· | x_≤t))

with V-trace targets v_t from TorchRL's ``vtrace_advantage_estimate``, γ_t = 0 after an episode
end (IMPALA/torchbeast: a truncated episode is cut like a terminated one), rewards optionally
clipped, and the sums over batch and time (``reduction="sum"``, the paper's) or means.

With ``clip_ratio`` = ε (for several updates on one batch) the policy term is PPO's clipped
surrogate on the same advantage, as in Sample Factory's APPO (Petrenko et al., 2020): with
r_t = π(a_t | x_≤t) / μ(a_t | x_≤t) (μ: the behaviour policy) and A_t = r_t + γ_t v_{t+1} − V(x_t),

    loss_objective = −Σ_t min(r_t A_t, clip(r_t, 1 − ε, 1 + ε) A_t)

whose gradient on the first update of a batch (π = μ, r_t = 1) is the V-trace term's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import LossModule
from torchrl.objectives.value.functional import vtrace_advantage_estimate

REDUCTIONS = ("sum", "mean")


class R2ACLoss(LossModule):
    """V-trace actor-critic loss over one training segment, for an RTRL (or any) recurrent agent.

    Args:
        agent_network: a TensorDict module that, given a [B, T] segment, writes
            ``logits`` [B, T, A] and ``state_value`` [B, T, 1] (one call, shared trunk).
        gamma: discount γ.
        rho_thresh, c_thresh: V-trace clipping thresholds ρ̄ and c̄.
        entropy_cost, baseline_cost: weights of the entropy bonus and the value loss.
        reward_scale: multiply rewards by this before clipping (e.g. popgym's ±1/episode-length
            rewards × the episode length: ±1 per step); the logged returns stay unscaled.
        reward_clip: clip rewards to [−reward_clip, reward_clip]; None keeps them raw.
        reduction: ``"sum"`` over batch and time (paper, torchbeast) or ``"mean"``.
        clip_ratio: None (the paper's V-trace policy gradient) or PPO's clipping ε of the ratio
            π/μ (a trust region for several updates per batch); logs ``clip_fraction``.

    The input segment is what a TorchRL ``Collector`` returns, [B, T]: observations, ``action``
    (integer index), the behaviour log-probability (``action_log_prob``, TorchRL 0.14's key),
    ``is_init`` and the
    recurrent state keys at the root, and ``("next", ...)`` with ``reward``, ``done`` and the next
    observation. If the ``mask`` key is present (False on steps not to train on, e.g. padding), masked steps
    contribute nothing.
    """

    @dataclass
    class _AcceptedKeys:
        """Input and output keys; change them with :meth:`set_keys`."""

        action: NestedKey = "action"
        sample_log_prob: NestedKey = "action_log_prob"
        logits: NestedKey = "logits"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        mask: NestedKey = "mask"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        *,
        gamma: float = 0.99,
        rho_thresh: float = 1.0,
        c_thresh: float = 1.0,
        entropy_cost: float = 0.01,
        baseline_cost: float = 0.5,
        reward_scale: float = 1.0,
        reward_clip: float | None = 1.0,
        reduction: str = "sum",
        clip_ratio: float | None = None,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid choices are {', '.join(REDUCTIONS)}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if reward_scale <= 0:
            raise ValueError(f"reward_scale must be positive, got {reward_scale}")
        if reward_clip is not None and reward_clip <= 0:
            raise ValueError(f"reward_clip must be positive or None, got {reward_clip}")
        if clip_ratio is not None and not 0.0 < clip_ratio < 1.0:
            raise ValueError(f"clip_ratio must be in (0, 1) or None, got {clip_ratio}")
        self.clip_ratio = clip_ratio
        self.agent_network = agent_network
        self.gamma, self.rho_thresh, self.c_thresh = gamma, rho_thresh, c_thresh
        self.entropy_cost, self.baseline_cost = entropy_cost, baseline_cost
        self.reward_scale, self.reward_clip, self.reduction = reward_scale, reward_clip, reduction
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        keys = self.tensor_keys
        self.in_keys = [
            *self.agent_network.in_keys,
            keys.action,
            keys.sample_log_prob,
            ("next", keys.reward),
            ("next", keys.done),
            *[("next", k) for k in self.agent_network.in_keys],
        ]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._set_in_keys()

    @property
    def out_keys(self) -> list[str]:
        return ["loss_objective", "loss_critic", "loss_entropy", "entropy", "advantage_mean", "clip_fraction"]

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        if tensordict.batch_dims != 2:
            raise ValueError(
                "R2ACLoss expects a [B, T] segment (batch, time); "
                f"got batch_size {tuple(tensordict.batch_size)}"
            )
        present = set(tensordict.keys(include_nested=True))
        for key in (keys.action, keys.sample_log_prob, ("next", keys.reward), ("next", keys.done)):
            if key not in present:
                raise KeyError(
                    f"the segment has no {key!r} entry; keys are {sorted(map(str, tensordict.keys()))}"
                )

        # With the actor's ("next", state) (an output, not an input, of the network) the RTRL module
        # identifies each segment's continuation bit for bit, also when the actor acted with older
        # weights than the learner's (decoupled actors; docs/torchrl.md).
        actor_states = [k for k in self.agent_network.out_keys if isinstance(k, tuple) and k[0] == "next"]
        with set_recurrent_mode(True):
            out = self.agent_network(
                tensordict.select(*self.agent_network.in_keys, *actor_states, strict=False)
            )
            with torch.no_grad():  # value of the observation after the segment (no gradient, no RTRL carry)
                last = tensordict["next"][:, -1:].select(*self.agent_network.in_keys, strict=False)
                bootstrap = self.agent_network(last).get(keys.value)
        logits, value = out.get(keys.logits), out.get(keys.value)
        return self.loss_from_outputs(tensordict, logits, value, bootstrap)

    def loss_from_outputs(
        self, tensordict: TensorDictBase, logits: torch.Tensor, value: torch.Tensor, bootstrap: torch.Tensor
    ) -> TensorDict:
        """The loss given the agent's outputs: logits [B, T, A], value [B, T, 1], bootstrap [B, 1, 1]."""
        keys = self.tensor_keys
        reward = tensordict.get(("next", keys.reward)).to(value.dtype).view_as(value) * self.reward_scale
        if self.reward_clip is not None:
            reward = reward.clamp(-self.reward_clip, self.reward_clip)
        done = tensordict.get(("next", keys.done)).view_as(value).bool()
        action = tensordict.get(keys.action)
        if action.shape == logits.shape:  # one-hot actions
            action = action.argmax(-1)
        action = action.view(value.shape[:-1]).long()
        mask = tensordict.get(keys.mask, None)
        mask = torch.ones_like(value) if mask is None else mask.to(value.dtype).view_as(value)

        log_probs = torch.log_softmax(logits, dim=-1)
        log_pi = log_probs.gather(-1, action.unsqueeze(-1))  # [B, T, 1]
        log_mu = tensordict.get(keys.sample_log_prob).to(value.dtype).view_as(value)
        bootstrap = bootstrap.detach().view_as(value[:, :1])
        next_value = torch.cat((value[:, 1:].detach(), bootstrap), dim=1)
        # Constants as tensors of the values' dtype: TorchRL turns Python floats into float32 tensors,
        # which would round γ, ρ̄ and c̄ in a float64 run.
        gamma, rho_thresh, c_thresh = (
            torch.tensor(v, dtype=value.dtype, device=value.device)
            for v in (self.gamma, self.rho_thresh, self.c_thresh)
        )
        with torch.no_grad():
            pg_advantage, vs = vtrace_advantage_estimate(
                gamma, log_pi.detach(), log_mu, value.detach(), next_value, reward, done,
                terminated=done, rho_thresh=rho_thresh, c_thresh=c_thresh, time_dim=-2,
            )  # fmt: skip

        if self.clip_ratio is None:
            objective, clipped = log_pi * pg_advantage, torch.zeros_like(value)
        else:  # PPO's clipped surrogate on the advantage against the V-trace target of the next step
            next_vs = torch.cat((vs[:, 1:], bootstrap), dim=1)
            advantage = reward + gamma * (~done) * next_vs - value.detach()
            ratio = (log_pi - log_mu).exp()
            low, high = 1.0 - self.clip_ratio, 1.0 + self.clip_ratio
            objective = torch.min(ratio * advantage, ratio.clamp(low, high) * advantage)
            clipped = ((ratio < low) | (ratio > high)).to(value.dtype).detach()

        entropy = -(log_probs.exp() * log_probs).sum(-1, keepdim=True)
        steps = mask.sum().clamp_min(1)
        reduce = torch.sum if self.reduction == "sum" else (lambda t: t.sum() / steps)
        return TensorDict(
            {
                "loss_objective": -reduce(mask * objective),
                "loss_critic": self.baseline_cost * 0.5 * reduce(mask * (vs - value).pow(2)),
                "loss_entropy": -self.entropy_cost * reduce(mask * entropy),
                "entropy": (mask * entropy).sum().detach() / steps,
                "advantage_mean": (mask * pg_advantage).sum() / steps,
                "clip_fraction": (mask * clipped).sum() / steps,
            },
            batch_size=[],
        )
