"""TorchRL's recurrent-DQN tutorial pipeline (replay with ``SliceSampler``, ``DQNLoss``, ``SoftUpdate``)
with an RTRL core in place of ``LSTMModule``, on CartPole state observations (the tutorial uses
pixels). The switch is the line marked ``# <- the switch``. Run:

    python docs/examples/torchrl_recurrent_dqn.py --frames 1500

It prints how many segment starts got exact RTRL and how many the stored-state truncated gradient
(slices that start mid-episode have no carried sensitivity; see docs/torchrl.md).
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torchrl.collectors import Collector
from torchrl.data import LazyMemmapStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import SliceSampler
from torchrl.envs import Compose, GymEnv, InitTracker, RewardScaling, StepCounter, TransformedEnv
from torchrl.modules import MLP, EGreedyModule, QValueModule
from torchrl.objectives import DQNLoss, SoftUpdate

from rtrl_modules import ELSTMModule, segment_start_counts


def train(frames: int = 1500, updates: int = 4, seed: int = 0) -> tuple[list[float], dict[str, int]]:
    """Returns the losses and the segment-start counts of the recurrent module."""
    torch.manual_seed(seed)
    env = TransformedEnv(
        GymEnv("CartPole-v1"), Compose(StepCounter(), InitTracker(), RewardScaling(loc=0.0, scale=0.1))
    )
    env.set_seed(seed)
    feature = Mod(MLP(out_features=32, num_cells=[32]), in_keys=["observation"], out_keys=["embed"])
    recurrent = ELSTMModule(input_size=32, hidden_size=64, in_key="embed", out_key="embed")  # <- the switch
    env.append_transform(recurrent.make_tensordict_primer())
    head = Mod(MLP(out_features=2, num_cells=[64]), in_keys=["embed"], out_keys=["action_value"])
    policy = Seq(feature, recurrent, head, QValueModule(spec=env.action_spec))
    exploration = EGreedyModule(annealing_num_steps=1_000_000, spec=env.action_spec, eps_init=0.2)
    loss_fn = DQNLoss(policy, action_space=env.action_spec, delay_value=True)
    target_update = SoftUpdate(loss_fn, eps=0.95)
    optim = torch.optim.Adam(policy.parameters(), lr=3e-4)
    buffer = TensorDictReplayBuffer(
        storage=LazyMemmapStorage(100_000, scratch_dir=tempfile.mkdtemp()),
        sampler=SliceSampler(slice_len=50, end_key=("next", "done"), strict_length=False),
        batch_size=200,
    )
    collector = Collector(
        env, Seq(policy, exploration), frames_per_batch=50, total_frames=frames, replay_buffer=buffer
    )
    losses = []
    for _ in collector:
        if len(buffer) < 500:
            continue
        for _ in range(updates):
            loss = loss_fn(buffer.sample())["loss"]  # slices, flat [B * T], is_init at slice starts
            loss.backward()
            optim.step()
            optim.zero_grad()
            losses.append(float(loss.detach()))
        exploration.step(collector.frames_per_batch)
        target_update.step()
    collector.shutdown()
    return losses, segment_start_counts(loss_fn)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    losses, counts = train(args.frames, seed=args.seed)
    print(f"{len(losses)} updates, last loss {losses[-1]:.4g}")
    print(f"segment starts: {counts['exact']} exact RTRL, {counts['truncated']} truncated")


if __name__ == "__main__":
    main()
