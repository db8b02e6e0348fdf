"""Recurrent PPO on CartPole-v1 without velocities (a POMDP), in plain TorchRL — with an RTRL core.

The pipeline is the standard TorchRL recurrent one (GymEnv + InitTracker + primer + Collector +
GAE + ClipPPOLoss). Switching from TorchRL's ``LSTMModule`` to exact RTRL is the one line marked
``# <- the switch``; everything else is unchanged. Run:

    python docs/examples/torchrl_ppo.py --core rtrl --iterations 50
    python docs/examples/torchrl_ppo.py --core lstm --iterations 50       # TorchRL's LSTM (TBPTT)
"""

from __future__ import annotations

import argparse

import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import Compose, GymEnv, InitTracker, RewardSum, SerialEnv, StepCounter, TransformedEnv
from torchrl.envs.transforms import UnaryTransform
from torchrl.modules import LSTMModule, ProbabilisticActor, set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from rtrl_modules.modules import ELSTMModule


def make_env(num_envs: int, seed: int) -> TransformedEnv:
    """num_envs CartPoles; the policy sees only positions ("position" = [x, θ]), not velocities."""
    env = TransformedEnv(
        SerialEnv(num_envs, lambda: GymEnv("CartPole-v1", categorical_action_encoding=True)),
        Compose(
            InitTracker(),  # "is_init": True at each episode's first step (recurrent modules need it)
            StepCounter(),
            RewardSum(),
            UnaryTransform(in_keys=["observation"], out_keys=["position"], fn=lambda obs: obs[..., ::2]),
        ),
    )
    env.set_seed(seed)
    return env


def make_actor_critic(core: str, hidden: int = 64) -> tuple[ProbabilisticActor, Seq]:
    embed = Mod(nn.Sequential(nn.Linear(2, hidden), nn.Tanh()), in_keys=["position"], out_keys=["embed"])
    if core == "lstm":
        recurrent = LSTMModule(input_size=hidden, hidden_size=hidden, in_key="embed", out_key="features")
    else:
        recurrent = ELSTMModule(
            hidden, hidden, in_key="embed", out_key="features", gradient=core
        )  # <- the switch
    trunk = Seq(embed, recurrent)
    policy_head = Mod(nn.Linear(hidden, 2), in_keys=["features"], out_keys=["logits"])
    value_head = Mod(nn.Linear(hidden, 1), in_keys=["features"], out_keys=["state_value"])
    actor = ProbabilisticActor(
        Seq(trunk, policy_head),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    return actor, Seq(trunk, value_head)


def train(
    core: str = "rtrl",
    iterations: int = 50,
    num_envs: int = 4,
    segment: int = 32,
    epochs: int = 4,
    seed: int = 0,
) -> list[float]:
    """Returns the mean return of the episodes finished in each iteration."""
    torch.manual_seed(seed)
    env = make_env(num_envs, seed)
    actor, critic = make_actor_critic(core)
    env.append_transform(get_primers_from_module(actor))  # the recurrent state, zeroed at resets
    # Synchronous collection: each batch is [num_envs, segment], row b = env b, and consecutive
    # batches continue each env where the previous one stopped (what RTRL's carried state needs).
    collector = Collector(
        env, actor, frames_per_batch=num_envs * segment, total_frames=num_envs * segment * iterations
    )
    advantage = GAE(gamma=0.99, lmbda=0.95, value_network=critic, average_gae=True, deactivate_vmap=True)
    loss_fn = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=0.01, critic_coeff=0.5)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=2e-3)

    returns = []
    for data in collector:  # data: [num_envs, segment]
        for _ in range(epochs):
            with torch.no_grad(), set_recurrent_mode(True):
                advantage(data)
            losses = loss_fn(data)  # runs the actor and critic in recurrent mode over [B, T]
            loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
            loss.backward()  # RTRL: exact gradient through every earlier segment of each episode
            nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
            optim.step()
            optim.zero_grad()
        done = data["next", "done"]
        finished = data["next", "episode_reward"][done]
        returns.append(float(finished.mean()) if finished.numel() else float("nan"))
        collector.update_policy_weights_()
    collector.shutdown()
    return returns


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core", choices=["rtrl", "rtrl_stepwise", "tbptt", "lstm"], default="rtrl")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--segment", type=int, default=32)
    args = parser.parse_args()
    for i, ret in enumerate(train(args.core, args.iterations, args.num_envs, args.segment)):
        print(f"iteration {i:3d}  mean episode return {ret:7.2f}")
