"""A new loss for RTRL modules: n-step advantage actor-critic, written as a TorchRL ``LossModule``.

It follows the one rule an RTRL loss has (docs/losses.md): run the recurrent network **once with
gradients over the whole [B, T] segment, in recurrent mode**; anything else (bootstrap values,
targets) under ``torch.no_grad()``. Run it on the native memory task:

    python docs/examples/custom_loss.py --updates 300
"""

from __future__ import annotations

import argparse

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import LossModule

from rtrl_modules.envs import make_env
from rtrl_modules.modules import PreviousReward, make_agent
from rtrl_modules.training import linear_decay, make_collector, make_optimizer, train


class NStepActorCritic(LossModule):
    """Advantage actor-critic with n-step returns bootstrapped at the end of the segment."""

    def __init__(self, network, gamma: float = 0.99, value_cost: float = 0.5, entropy_cost: float = 0.01):
        super().__init__()
        self.network, self.gamma = network, gamma
        self.value_cost, self.entropy_cost = value_cost, entropy_cost

    def forward(self, batch: TensorDictBase) -> TensorDict:
        with set_recurrent_mode(True):
            out = self.network(batch.select(*self.network.in_keys, strict=False))  # once, with gradients
            with torch.no_grad():
                last = batch["next"][:, -1:].select(*self.network.in_keys, strict=False)
                bootstrap = self.network(last)["state_value"][:, 0]  # [B, 1]
        logits, value = out["logits"], out["state_value"]  # [B, T, A], [B, T, 1]
        reward, done = batch["next", "reward"], batch["next", "done"].float()
        returns, running = torch.empty_like(value), bootstrap
        for t in reversed(range(value.shape[1])):  # R_t = r_t + γ (1 − done_t) R_{t+1}
            running = reward[:, t] + self.gamma * (1 - done[:, t]) * running
            returns[:, t] = running
        advantage = (returns - value).detach()
        log_probs = logits.log_softmax(-1)
        log_pi = log_probs.gather(-1, batch["action"].unsqueeze(-1))
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        return TensorDict(
            {
                "loss_policy": -(log_pi * advantage).mean(),
                "loss_value": self.value_cost * (returns - value).pow(2).mean(),
                "loss_entropy": -self.entropy_cost * entropy,
            },
            batch_size=[],
        )


def main(updates: int = 300, delay: int = 8, segment_length: int = 4, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    env = make_env("memory", "delayed_cue", 16, delay=delay, seed=seed)
    env.append_transform(PreviousReward())
    agent = make_agent((env.observation_spec["observation"].shape[-1],), 2, hidden_size=32, embed_size=32,
                       forget_bias=3.0)  # fmt: skip
    env.append_transform(agent.core.make_tensordict_primer())
    collector = make_collector(env, agent.actor, segment_length, total_frames=16 * segment_length * updates)
    loss = NStepActorCritic(agent.network)
    optimizer = make_optimizer(loss.parameters(), lr=3e-3)
    history = train(collector, loss, optimizer, linear_decay(optimizer, updates), log_every=100)
    collector.shutdown()
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=300)
    main(parser.parse_args().updates)
