"""The paper's agent builder: shapes, D = 257, baselines, frozen pre-trained stem, prev-reward transform."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import Compose, GymEnv, InitTracker, TransformedEnv
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import A2CLoss

from rtrl_modules.modules import ELSTMModule, ImpalaStem, PreviousReward, load_stem, make_agent


def pixels_td(shape, batch=(2,)):
    return TensorDict(
        pixels=torch.randint(0, 256, (*batch, *shape), dtype=torch.uint8),
        prev_reward=torch.full((*batch, 1), 3.0),
        is_init=torch.ones(*batch, 1, dtype=torch.bool),
        batch_size=batch,
    )


@pytest.mark.parametrize(
    "shape, channels_last", [((3, 64, 64), False), ((4, 84, 84), False), ((84, 84, 4), True)]
)
def test_pixel_agent_shapes_and_input_size_257(shape, channels_last):
    agent = make_agent(shape, num_actions=6, hidden_size=32, channels_last=channels_last)
    assert isinstance(agent.core, ELSTMModule) and agent.core.input_size == 257
    td = agent.actor(pixels_td(shape))
    assert td["embed"].shape == (2, 257)
    assert (td["embed"][:, -1] == 1.0).all()  # the previous reward, clipped to [-1, 1]
    assert td["logits"].shape == (2, 6) and td["action"].shape == (2,) and td["action_log_prob"].shape == (2,)
    assert agent.critic(td)["state_value"].shape == (2, 1)
    if shape == (3, 64, 64):  # recurrent mode over [B, T] (what the losses run)
        seq = pixels_td(shape, batch=(1, 2))
        seq["recurrent_state"] = torch.zeros(1, 2, 32)
        with set_recurrent_mode(True), torch.no_grad():
            assert agent.critic(seq)["state_value"].shape == (1, 2, 1)


def test_impala_stem_matches_the_paper_layout():
    stem = ImpalaStem((3, 64, 64))
    convs = [m for m in stem.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32]
    assert stem.fc[0].in_features == 32 * 8 * 8 and stem.fc[0].out_features == 256
    assert ImpalaStem((4, 84, 84)).fc[0].in_features == 32 * 11 * 11


def test_vector_agent_and_baselines():
    for core in ("rtrl", "tbptt", "lstm", "feedforward"):
        agent = make_agent((7,), num_actions=3, core=core, hidden_size=16, embed_size=24)
        td = TensorDict(
            observation=torch.randn(2, 7),
            prev_reward=torch.zeros(2, 1),
            is_init=torch.ones(2, 1, dtype=torch.bool),
            batch_size=[2],
        )
        assert agent.actor(td)["logits"].shape == (2, 3)
        assert td["embed"].shape == (2, 25)
    with pytest.raises(ValueError, match="rtrl, rtrl_stepwise, tbptt, lstm, feedforward"):
        make_agent((7,), 3, core="transformer")
    with pytest.raises(ValueError, match="observation_shape"):
        make_agent((2, 7), 3)


def test_frozen_pretrained_stem(tmp_path):
    shape = (3, 16, 16)  # small images keep the test fast; the layout is the same
    pretrained = make_agent(shape, 4, hidden_size=8)
    torch.save(pretrained.stem.state_dict(), tmp_path / "stem.pt")
    torch.save(pretrained.actor.state_dict(), tmp_path / "agent.pt")  # a whole-agent checkpoint
    for source in (tmp_path / "stem.pt", tmp_path / "agent.pt", {"stem": pretrained.stem.state_dict()}):
        agent = make_agent(shape, 4, hidden_size=8, stem_checkpoint=source, freeze_stem=True)
        for (name, p), q in zip(agent.stem.named_parameters(), pretrained.stem.parameters()):
            assert torch.equal(p, q) and not p.requires_grad, name
        assert all(p.requires_grad for p in agent.core.parameters())
        td = agent.actor(pixels_td(shape))
        td["logits"].sum().backward()
        assert all(p.grad is None for p in agent.stem.parameters())
    with pytest.raises(ValueError, match="stem_checkpoint"):
        make_agent((3, 64, 64), 4, freeze_stem=True)
    with pytest.raises(KeyError, match="lacks"):
        load_stem(ImpalaStem((3, 64, 64)), {"conv.0.weight": torch.zeros(1)})


def test_agent_collects_on_gym_and_trains_with_a2c():
    env = TransformedEnv(GymEnv("CartPole-v1"), Compose(InitTracker(), PreviousReward()))
    agent = make_agent((4,), 2, hidden_size=16, embed_size=32)
    collector = Collector(
        env, agent.actor, frames_per_batch=40, total_frames=40, auto_register_policy_transforms=True
    )
    data = next(iter(collector)).unsqueeze(0)
    collector.shutdown()
    reward_seen = data["next", "reward"][:, :-1]
    carried = ~data["is_init"][:, 1:]
    assert torch.equal(data["prev_reward"][:, 1:][carried], reward_seen[carried])
    assert (data["prev_reward"][data["is_init"]] == 0).all()
    data["advantage"] = torch.randn(1, 40, 1)
    data["value_target"] = torch.randn(1, 40, 1)
    loss = A2CLoss(agent.actor, agent.critic)
    losses = loss(data)
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    assert agent.core.core.cell.weight_ih.grad.abs().sum() > 0
    assert agent.core.carried.has_end.all()
