"""Official-code fidelity: the eLSTM's official initialisation and loading official checkpoints.

The official checkpoints are built here from the official parameter names and shapes
(IDSIA/rtrl-elstm, ``torchbeast_procgen/model.py``); an independent forward pass written from those
tensors (torch.nn.functional only) is the reference our agent must reproduce after conversion.
"""

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

import rtrl_modules as rm
from rtrl_modules.cells import ELSTMCell
from rtrl_modules.modules import convert_official_state_dict, load_official_checkpoint, load_stem, make_agent

N, A, T, B = 8, 15, 6, 2  # ProcGen: FC of N units, D = N + 1


def official_state_dict(kind: str, generator: torch.Generator, conv_scale: int = 1) -> dict:
    """Random parameters with the official names/shapes: ``kind`` = rtrl (RTRLQuasiLSTMNet),
    quasi_lstm (QuasiLSTMNet), lstm or feedforward (Net)."""

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=generator, dtype=torch.float64)

    sd, c_in = {}, 3
    for i, c in enumerate(ch * conv_scale for ch in (16, 32, 32)):
        sd[f"feat_convs.{i}.0.weight"], sd[f"feat_convs.{i}.0.bias"] = rand(c, c_in, 3, 3), rand(c)
        for block in ("resnet1", "resnet2"):
            for j in (1, 3):
                sd[f"{block}.{i}.{j}.weight"], sd[f"{block}.{i}.{j}.bias"] = rand(c, c, 3, 3) / 4, rand(c)
        c_in = c
    embed = N if kind in ("rtrl", "quasi_lstm") else 256  # Net's FC is 256 wide
    sd["fc.weight"], sd["fc.bias"] = rand(embed, 2048 * conv_scale) / 20, rand(embed)
    d = embed + 1
    features = d if kind == "feedforward" else N
    if kind in ("rtrl", "quasi_lstm"):
        for name in ("wm_z", "wm_f"):
            sd[f"core.{name}"] = rand(N, d)
        for name in ("wv_z", "wv_f", "bias_z", "bias_f"):
            sd[f"core.{name}"] = rand(1, N)
        gate = "output_gate" if kind == "rtrl" else "core.out_gate_linear"
        sd[f"{gate}.weight"], sd[f"{gate}.bias"] = rand(N, d + N), rand(N)
    elif kind == "lstm":
        sd["core.weight_ih_l0"], sd["core.weight_hh_l0"] = rand(4 * N, d), rand(4 * N, N)
        sd["core.bias_ih_l0"], sd["core.bias_hh_l0"] = rand(4 * N), rand(4 * N)
    sd["policy.weight"], sd["policy.bias"] = rand(A, features), rand(A)
    sd["baseline.weight"], sd["baseline.bias"] = rand(1, features), rand(1)
    return sd


def official_forward(sd: dict, frames, reward, done):
    """The official nets' forward, from the official tensors: frames uint8 [T, B, 3, 64, 64], reward
    [T, B], done [T, B] bool (True at an episode's first step) → logits [T, B, A], baseline [T, B]."""
    x = frames.flatten(0, 1).double() / 255.0
    for i in range(3):
        x = F.conv2d(x, sd[f"feat_convs.{i}.0.weight"], sd[f"feat_convs.{i}.0.bias"], padding=1)
        x = F.max_pool2d(x, 3, 2, 1)
        for block in ("resnet1", "resnet2"):
            y = F.conv2d(F.relu(x), sd[f"{block}.{i}.1.weight"], sd[f"{block}.{i}.1.bias"], padding=1)
            x = x + F.conv2d(F.relu(y), sd[f"{block}.{i}.3.weight"], sd[f"{block}.{i}.3.bias"], padding=1)
    x = F.relu(F.linear(F.relu(x).reshape(T * B, -1), sd["fc.weight"], sd["fc.bias"]))
    core_in = torch.cat([x, reward.clamp(-1, 1).reshape(T * B, 1)], dim=-1).view(T, B, -1)
    if "core.wm_z" in sd:
        c, cells = torch.zeros(B, N, dtype=torch.float64), []
        for t in range(T):
            c = c * (~done[t]).double().unsqueeze(-1)
            z = torch.tanh(core_in[t] @ sd["core.wm_z"].T + sd["core.wv_z"] * c + sd["core.bias_z"])
            f = torch.sigmoid(core_in[t] @ sd["core.wm_f"].T + sd["core.wv_f"] * c + sd["core.bias_f"])
            c = c * f + (1.0 - f) * z
            cells.append(c)
        cells = torch.stack(cells)
        gate = "output_gate" if "output_gate.weight" in sd else "core.out_gate_linear"
        features = cells * torch.sigmoid(
            F.linear(torch.cat([core_in, cells], -1), sd[f"{gate}.weight"], sd[f"{gate}.bias"])
        )
    else:
        features = core_in
    logits = F.linear(features, sd["policy.weight"], sd["policy.bias"])
    return logits, F.linear(features, sd["baseline.weight"], sd["baseline.bias"]).squeeze(-1)


def episode_data(generator):
    frames = torch.randint(0, 256, (T, B, 3, 64, 64), generator=generator, dtype=torch.uint8)
    reward = 3 * torch.randn(T, B, generator=generator, dtype=torch.float64)  # clipping matters
    done = torch.zeros(T, B, dtype=torch.bool)
    done[0], done[3, 1] = True, True  # env 1 starts a new episode at t = 3
    return frames, reward, done


def our_forward(agent, frames, reward, done):
    td = TensorDict(
        pixels=frames.transpose(0, 1),
        prev_reward=reward.transpose(0, 1).unsqueeze(-1),
        is_init=done.transpose(0, 1).unsqueeze(-1),
        batch_size=[B, T],
    )
    if "recurrent_state" in agent.network.in_keys:
        td["recurrent_state"] = torch.zeros(B, T, N, dtype=torch.float64)
    with set_recurrent_mode(True), torch.no_grad():
        out = agent.network(td)
    return out["logits"].transpose(0, 1), out["state_value"].squeeze(-1).transpose(0, 1)


@pytest.mark.parametrize("kind", ["rtrl", "quasi_lstm", "feedforward"])
def test_converted_official_checkpoint_reproduces_the_official_outputs(kind):
    generator = torch.Generator().manual_seed(0)
    sd = official_state_dict(kind, generator)
    options = {"core": "feedforward", "feedforward_layer": False} if kind == "feedforward" else {}
    embed = None if kind != "feedforward" else 256  # ProcGen's RTRL net: FC of hidden_size units
    agent = make_agent((3, 64, 64), A, hidden_size=N, embed_size=embed, **options)
    agent.network.double()
    load_official_checkpoint(agent, {"model_state_dict": sd})  # the official model.tar layout
    frames, reward, done = episode_data(generator)
    logits, baseline = our_forward(agent, frames, reward, done)
    ref_logits, ref_baseline = official_forward(sd, frames, reward, done)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(baseline, ref_baseline, rtol=1e-10, atol=1e-10)
    # the reset matters: env 1's outputs after t = 3 differ from a run without it
    if kind != "feedforward":
        no_reset = done.clone()
        no_reset[3, 1] = False
        assert not torch.allclose(our_forward(agent, frames, reward, no_reset)[0][3:, 1], logits[3:, 1])


def test_official_lstm_checkpoint_and_file_loading(tmp_path):
    sd = official_state_dict("lstm", torch.Generator().manual_seed(1))
    torch.save({"model_state_dict": sd, "flags": {}}, tmp_path / "model.tar")
    agent = make_agent((3, 64, 64), A, hidden_size=N, core="lstm")
    agent.network.double()
    load_official_checkpoint(agent, tmp_path / "model.tar")
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert torch.equal(getattr(agent.core.lstm, name), sd[f"core.{name}"])
    assert torch.equal(agent.stem.fc[0].weight, sd["fc.weight"])


def test_official_checkpoint_mismatches_fail_clearly():
    sd = official_state_dict("rtrl", torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="eLSTM core but the agent has no recurrent core"):
        load_official_checkpoint(make_agent((3, 64, 64), A, hidden_size=N, core="feedforward"), sd)
    with pytest.raises(ValueError, match="build the agent with the official run's sizes"):
        load_official_checkpoint(make_agent((3, 64, 64), A, hidden_size=N), sd)  # FC 256, not N
    with pytest.raises(KeyError, match="not an official checkpoint"):
        convert_official_state_dict({"fc.weight": torch.zeros(1)})


def test_conv_only_loading_from_an_official_checkpoint_with_conv_scale():
    sd = official_state_dict("rtrl", torch.Generator().manual_seed(3), conv_scale=2)
    agent = make_agent((3, 64, 64), A, hidden_size=N, conv_scale=2, stem_checkpoint={"model_state_dict": sd},
                       stem_parts="conv", freeze_stem="conv")  # fmt: skip
    assert agent.stem.conv[0].out_channels == 32 and agent.stem.fc[0].in_features == 4096
    assert torch.equal(agent.stem.conv[11].conv1.weight, sd["resnet2.2.3.weight"].float())
    assert agent.stem.fc[0].weight.shape == (256, 4096)  # FC not loaded: still our own 256 units
    assert not any(p.requires_grad for p in agent.stem.conv.parameters())
    assert all(p.requires_grad for p in agent.stem.fc.parameters())
    with pytest.raises(ValueError, match="valid choices are all, conv"):
        load_stem(agent.stem, sd, parts="fc_only")


# ------------------------------------------------------------------------------------------ init
def test_official_init_statistics():
    torch.manual_seed(0)
    n, d = 512, 257
    cell = ELSTMCell(d, n, init="official")
    for p in (cell.weight_ih, cell.weight_hh, cell.bias):
        assert abs(p.mean().item()) < 0.01 and abs(p.std().item() - 0.1) < 0.005
    assert cell.weight_ih.abs().max() > 1 / n**0.5  # Gaussian, not U(±1/√N)
    # the output gate keeps nn.Linear's U(±1/√(D + N)), as in the official code
    assert cell.output_gate.weight.abs().max() <= 1 / (d + n) ** 0.5
    shifted = ELSTMCell(d, n, forget_bias=1.0, init="official")
    assert abs(shifted.bias[1].mean().item() - 1.0) < 0.02 and abs(shifted.bias[0].mean().item()) < 0.02
    default = ELSTMCell(d, n)
    assert default.weight_ih.abs().max() <= 1 / n**0.5
    core = rm.ELSTM(d, n, init="official")
    assert abs(core.cell.weight_ih.std().item() - 0.1) < 0.005
    agent = make_agent((7,), 3, hidden_size=n, init="official")
    assert abs(agent.core.core.cell.weight_ih.std().item() - 0.1) < 0.005
    with pytest.raises(ValueError, match="unknown init 'xavier'; valid choices are default, official"):
        ELSTMCell(3, 4, init="xavier")
