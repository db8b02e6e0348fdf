"""The paper's agent builder: shapes, D = 257, baselines, frozen pre-trained stem, prev-reward transform."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.envs import Compose, GymEnv, InitTracker, TransformedEnv
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import A2CLoss

from rtrl_modules.modules import ELSTMModule, ImpalaStem, PreviousReward, load_stem, make_agent
from rtrl_modules.modules.agent import STEMS, NatureStem, ShallowStem


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


@pytest.mark.parametrize("stem", ["nature", "shallow"])
@pytest.mark.parametrize(
    "shape, channels_last", [((3, 64, 64), False), ((4, 84, 84), False), ((84, 84, 4), True)]
)
def test_small_stems_shapes_scaling_and_parts(stem, shape, channels_last):
    agent = make_agent(shape, num_actions=6, hidden_size=16, stem=stem, channels_last=channels_last)
    assert type(agent.stem) is STEMS[stem][0] and agent.core.input_size == 257
    td = agent.actor(pixels_td(shape, batch=(2, 3)))  # any leading dims
    assert td["embed"].shape == (2, 3, 257) and td["logits"].shape == (2, 3, 6)
    assert agent.critic(td)["state_value"].shape == (2, 3, 1)
    # uint8 pixels are scaled to [0, 1]: the same as float input / 255
    pixels = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    torch.testing.assert_close(agent.stem(pixels), agent.stem(pixels.float() / 255.0))
    # channels_last: the same stem on the permuted frames
    if channels_last:
        twin = make_agent((shape[2], shape[0], shape[1]), 6, hidden_size=16, stem=stem)
        twin.stem.load_state_dict(agent.stem.state_dict())
        torch.testing.assert_close(twin.stem(pixels.permute(0, 3, 1, 2)), agent.stem(pixels))
    with pytest.raises(ValueError, match="expects observations"):
        agent.stem(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    # the parts freeze_stem / stem_parts address
    source = agent.stem.state_dict()
    frozen = make_agent(shape, 6, hidden_size=16, stem=stem, channels_last=channels_last,
                        stem_checkpoint=source, freeze_stem="conv")  # fmt: skip
    assert not any(p.requires_grad for p in frozen.stem.conv.parameters())
    assert all(p.requires_grad for p in frozen.stem.fc.parameters())


def test_small_stems_match_their_published_layouts():
    nature, shallow = NatureStem((4, 84, 84)), ShallowStem((4, 84, 84))  # Mnih et al. 2015; IMPALA shallow
    convs = [m for m in nature.conv if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1))
    ]  # fmt: skip
    assert nature.fc[0].in_features == 64 * 7 * 7 and nature.fc[0].out_features == 256
    convs = [m for m in shallow.conv if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (16, (8, 8), (4, 4)), (32, (4, 4), (2, 2))
    ]  # fmt: skip
    assert shallow.fc[0].in_features == 32 * 9 * 9
    assert NatureStem((3, 64, 64)).fc[0].in_features == 64 * 4 * 4
    # channels (None: the stem's own) and conv_scale apply to every stem; embed_size sizes the FC
    stem = make_agent((3, 64, 64), 4, hidden_size=8, embed_size=32, stem="nature", conv_scale=2).stem
    assert [m.out_channels for m in stem.conv if isinstance(m, torch.nn.Conv2d)] == [64, 128, 128]
    assert stem.fc[0].out_features == 32
    stem = make_agent((3, 64, 64), 4, hidden_size=8, stem="shallow", channels=(4, 8)).stem
    assert [m.out_channels for m in stem.conv if isinstance(m, torch.nn.Conv2d)] == [4, 8]
    with pytest.raises(ValueError, match="too small"):
        NatureStem((3, 16, 16))


def test_stem_choice_errors_and_default():
    assert type(make_agent((3, 16, 16), 4, hidden_size=8).stem) is ImpalaStem  # the paper's, by default
    one_line = r"^unknown stem 'resnet'; valid choices are impala, nature, shallow$"
    with pytest.raises(ValueError, match=one_line):
        make_agent((3, 64, 64), 4, stem="resnet")
    with pytest.raises(ValueError, match="is for pixels"):
        make_agent((7,), 3, stem="nature")


def test_the_recipe_builds_the_configured_stem(tmp_path):
    from recipes.r2ac import R2ACModule

    small = dict(suite="atari", task="Pong", num_envs=1, hidden_size=4, embed_size=8, total_frames=100)
    assert type(R2ACModule(**small).agent.stem) is ImpalaStem
    module = R2ACModule(**small, stem="shallow")
    assert type(module.agent.stem) is ShallowStem and module.hparams.stem == "shallow"
    assert module.agent.stem.observation_shape == (4, 84, 84)
    with pytest.raises(ValueError, match="unknown stem 'resnet'; valid choices are impala, nature, shallow"):
        R2ACModule(**small, stem="resnet")
    module = R2ACModule(**small, stem="shallow", stem_init="orthogonal", rms_square_avg_init=1.0)
    assert (module.agent.stem.fc[0].bias == 0).all()
    optimizer = module.configure_optimizers()["optimizer"]
    assert all(torch.equal(s["square_avg"], torch.ones_like(p)) for p, s in optimizer.state.items())
    with pytest.raises(ValueError, match="unknown stem_init 'xavier'; valid choices are default, orthogonal"):
        R2ACModule(**small, stem_init="xavier")
    with pytest.raises(ValueError, match="rms_square_avg_init must be >= 0"):
        R2ACModule(**small, rms_square_avg_init=-1.0)


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


def test_official_procgen_and_feedforward_shapes():
    # official ProcGen RTRL net: FC of hidden_size units, D = N + 1
    agent = make_agent((3, 64, 64), 15, hidden_size=48, embed_size=None, init="official")
    assert agent.stem.fc[0].out_features == 48 and agent.core.input_size == 49
    td = agent.actor(pixels_td((3, 64, 64)))
    assert td["embed"].shape == (2, 49) and td["features"].shape == (2, 48)
    # official feed-forward Net: heads directly on [FC 256; prev reward], no layer
    agent = make_agent((3, 64, 64), 15, hidden_size=48, core="feedforward", feedforward_layer=False)
    td = agent.actor(pixels_td((3, 64, 64)))
    assert td["features"].shape == (2, 257) and torch.equal(td["features"], td["embed"])
    assert agent.policy_head.in_features == 257 and agent.value_head.in_features == 257
    assert not list(agent.core.parameters())
    # conv_scale widens every section (official --conv_scale)
    stem = make_agent((3, 64, 64), 15, hidden_size=8, conv_scale=2).stem
    assert [m.out_channels for m in stem.conv if isinstance(m, torch.nn.Conv2d)] == [32, 64, 64]


@pytest.mark.parametrize("freeze, frozen", [("conv", {"conv"}), ("fc", {"fc"}), ("all", {"conv", "fc"}),
                                            (True, {"conv", "fc"}), (False, set())])  # fmt: skip
def test_stem_freezing_conv_and_fc_separately(freeze, frozen):
    source = make_agent((3, 16, 16), 4, hidden_size=8).stem.state_dict()
    agent = make_agent((3, 16, 16), 4, hidden_size=8, stem_checkpoint=source, freeze_stem=freeze)
    for part in ("conv", "fc"):
        assert all(p.requires_grad != (part in frozen) for p in getattr(agent.stem, part).parameters()), part
    with pytest.raises(ValueError, match="valid choices are False, True, all, conv, fc"):
        make_agent((3, 16, 16), 4, stem_checkpoint=source, freeze_stem="resnet")


def test_conv_only_stem_loading_keeps_the_fc():
    source = make_agent((3, 16, 16), 4, hidden_size=8).stem
    agent = make_agent((3, 16, 16), 4, hidden_size=8)
    fc_before = agent.stem.fc[0].weight.clone()
    load_stem(agent.stem, source.state_dict(), freeze=False, parts="conv")
    assert torch.equal(agent.stem.conv[0].weight, source.conv[0].weight)
    assert torch.equal(agent.stem.fc[0].weight, fc_before)
    # a checkpoint without the FC (a different width) loads with parts="conv" only
    conv_only = {k: v for k, v in source.state_dict().items() if k.startswith("conv.")}
    load_stem(agent.stem, conv_only, freeze=False, parts="conv")
    with pytest.raises(KeyError, match="lacks"):
        load_stem(agent.stem, conv_only, freeze=False)


@pytest.mark.parametrize("at_reset", ["zero", "last"])
def test_previous_reward_at_an_episodes_first_step(at_reset):
    """Official actors pass the previous episode's last reward at a reset; ours pass 0 by default."""
    from torchrl.envs.utils import RandomPolicy

    from rtrl_modules.envs import make_env

    env = make_env("memory", "delayed_cue", num_envs=3, delay=2)  # reward ±1 at each 4th step only
    env.append_transform(PreviousReward(at_reset=at_reset))
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=36, total_frames=72)
    batches = list(collector)
    collector.shutdown()
    td = torch.cat(batches, dim=1)  # [3, 24]: the second batch continues the first
    reward, prev, is_init = td["next", "reward"], td["prev_reward"], td["is_init"]
    assert torch.equal(prev[:, 1:][~is_init[:, 1:]], reward[:, :-1][~is_init[:, 1:]])  # within episodes
    at_starts = prev[:, 1:][is_init[:, 1:]]
    expected = reward[:, :-1][is_init[:, 1:]] if at_reset == "last" else torch.zeros_like(at_starts)
    assert torch.equal(at_starts, expected)
    assert at_starts.numel() >= 9 and (at_starts.abs() == (1 if at_reset == "last" else 0)).all()
    assert (prev[:, 0] == 0).all()  # the very first reset: 0 either way
    with pytest.raises(ValueError, match="valid choices are zero, last"):
        PreviousReward(at_reset="previous")


def test_inactive_fraction_counts_units_that_never_fire():
    from rtrl_modules.training import inactive_fraction

    features = torch.zeros(4, 3, 5)  # [B, T, E]
    features[0, 1, 0] = 0.5  # unit 0 fires once
    features[:, :, 2] = 1.0  # unit 2 always fires
    assert inactive_fraction(features).item() == pytest.approx(3 / 5)
    assert inactive_fraction(torch.relu(torch.randn(64, 8))).item() == 0.0


def test_orthogonal_stem_init_and_its_errors():
    from rtrl_modules.modules import init_stem

    torch.manual_seed(0)
    default = make_agent((4, 84, 84), 6, hidden_size=8, stem="shallow").stem
    torch.manual_seed(0)
    orthogonal = make_agent((4, 84, 84), 6, hidden_size=8, stem="shallow", stem_init="orthogonal").stem
    for layer in orthogonal.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            w = layer.weight.reshape(layer.weight.shape[0], -1)  # [out, in]: orthonormal rows, ×√2
            torch.testing.assert_close(w @ w.T, 2 * torch.eye(w.shape[0]), atol=1e-4, rtol=0)
            assert (layer.bias == 0).all()
    frames = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():  # PyTorch's default init shrinks each layer's output; orthogonal keeps it
        assert orthogonal(frames).abs().mean() > 5 * default(frames).abs().mean()
    before = [p.clone() for p in default.parameters()]
    init_stem(default, "default")  # keeps PyTorch's initialisation as it is
    assert all(torch.equal(a, b) for a, b in zip(before, default.parameters()))
    one_line = r"^unknown stem_init 'xavier'; valid choices are default, orthogonal$"
    with pytest.raises(ValueError, match=one_line):
        make_agent((4, 84, 84), 6, stem="shallow", stem_init="xavier")
    with pytest.raises(ValueError, match=one_line):
        init_stem(default, "xavier")


def test_rmsprop_square_average_start():
    """Started at 1 (TensorFlow's RMSProp), the first update is lr·g/(√(α + (1-α)g²) + ε), small for
    a small gradient; PyTorch's start at 0 gives lr·g/(√(1-α)·|g| + ε) ≈ 10·lr whatever g's size."""
    from rtrl_modules.training import make_optimizer

    def first_update(square_avg_init, momentum=0.0):
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        optimizer = make_optimizer(
            [p], lr=1e-3, alpha=0.99, eps=1e-5, momentum=momentum, square_avg_init=square_avg_init
        )
        p.grad = torch.tensor([1e-4, 1e-2, 1.0], dtype=torch.float64)
        optimizer.step()
        return -p.detach(), optimizer

    g = torch.tensor([1e-4, 1e-2, 1.0], dtype=torch.float64)
    tf_like, optimizer = first_update(1.0)
    torch.testing.assert_close(tf_like, 1e-3 * g / ((0.99 + 0.01 * g**2).sqrt() + 1e-5), rtol=1e-12, atol=0)
    torch_like, _ = first_update(0.0)
    torch.testing.assert_close(torch_like, 1e-3 * g / (0.1 * g + 1e-5), rtol=1e-12, atol=0)
    assert tf_like[0] < 1e-6 and torch_like[0] > 4e-3  # a gradient of 1e-4 moves 1e-7, against 5e-3
    # the state is the optimizer's own: saved and restored with it
    restored = make_optimizer([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=1e-3)
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(next(iter(restored.state.values()))["square_avg"], 0.99 + 0.01 * g**2)
    assert first_update(1.0, momentum=0.9)[0][0] < 1e-6  # with momentum: its buffer starts at 0
    with pytest.raises(ValueError, match="square_avg_init must be >= 0, got -1"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], square_avg_init=-1.0)
