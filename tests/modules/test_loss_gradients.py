"""TorchRL's own losses (ClipPPOLoss, A2CLoss) on the RTRL module: segment-by-segment training with
carried sensitivities gives exactly the gradients of full-episode BPTT (float64, parameters fixed)."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import A2CLoss, ClipPPOLoss

from rtrl_modules.core import bptt_reference
from rtrl_modules.modules import ELSTMModule, IndRNNModule

OBS, EMBED, HIDDEN, ACTIONS = 3, 5, 6, 4
BATCH, SEG, K = 4, 5, 3


def build(module_cls, device="cpu", **module_kwargs):
    torch.manual_seed(0)
    stem = Mod(nn.Sequential(nn.Linear(OBS, EMBED), nn.Tanh()), ["observation"], ["embed"])
    rec = module_cls(EMBED, HIDDEN, in_key="embed", out_key="features", **module_kwargs)
    policy_head = Mod(nn.Linear(rec.output_size, ACTIONS), ["features"], ["logits"])
    value_head = Mod(nn.Linear(rec.output_size, 1), ["features"], ["state_value"])
    trunk = Seq(stem, rec)
    actor = ProbabilisticActor(
        Seq(trunk, policy_head),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = Seq(trunk, value_head)
    for m in (actor, critic):
        m.double().to(device)
    return stem, rec, policy_head, value_head, actor, critic


def act(actor, steps, gen):
    """What a collector does: one step at a time, state through the primer / ("next", ...) keys."""
    device = next(actor.parameters()).device
    obs = torch.randn(BATCH, steps, OBS, generator=gen, dtype=torch.float64).to(device)
    is_init = torch.rand(BATCH, steps, generator=gen) < 0.1
    is_init[:, 0] = True
    is_init[1, SEG] = True  # a reset exactly at a segment start
    is_init[2, SEG + 2] = True  # and one inside a segment
    is_init = is_init.to(device)
    state = torch.zeros(BATCH, HIDDEN, dtype=torch.float64, device=device)
    steps_td = []
    for t in range(steps):
        state = torch.where(is_init[:, t, None], 0.0, state)  # the primer's reset
        td = TensorDict(
            observation=obs[:, t], is_init=is_init[:, t, None], recurrent_state=state, batch_size=[BATCH]
        )
        with torch.no_grad():
            actor(td)
        state = td["next", "recurrent_state"]
        steps_td.append(td)
    data = torch.stack(steps_td, 1)
    data["advantage"] = torch.randn(BATCH, steps, 1, generator=gen, dtype=torch.float64).to(device)
    data["value_target"] = torch.randn(BATCH, steps, 1, generator=gen, dtype=torch.float64).to(device)
    return data


def make_loss(kind, actor, critic):
    if kind == "ppo":
        return ClipPPOLoss(actor, critic, entropy_coeff=0.01, critic_coeff=0.5, loss_critic_type="l2")
    return A2CLoss(actor, critic, entropy_coeff=0.01, critic_coeff=0.5, loss_critic_type="l2")


def total(losses):
    return sum(v for k, v in losses.items() if k.startswith("loss_"))


def grads(modules):
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()}


def bptt_reference_loss(kind, stem, rec, policy_head, value_head, data):
    """Core features by plain autograd over the whole episode (full BPTT), and the same TorchRL loss
    built on heads that read them."""
    embed = stem.module(data["observation"])
    features, _ = bptt_reference(rec.core, embed, data["is_init"].squeeze(-1))
    ref_actor = ProbabilisticActor(
        policy_head,
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    return features, make_loss(kind, ref_actor, value_head)


@pytest.mark.parametrize("module_cls", [ELSTMModule, IndRNNModule])
@pytest.mark.parametrize("kind", ["ppo", "a2c"])
@pytest.mark.parametrize("gradient", ["rtrl", "rtrl_stepwise"])
def test_segmented_torchrl_loss_equals_full_episode_bptt(kind, gradient, module_cls, device):
    stem, rec, policy_head, value_head, actor, critic = build(module_cls, device, gradient=gradient)
    data = act(actor, K * SEG, torch.Generator().manual_seed(1))
    loss_fn = make_loss(kind, actor, critic)
    compared = [rec, policy_head, value_head]

    # RTRL: K consecutive segments, one loss call each (PPO: two epochs per segment), no update.
    epochs = 2 if kind == "ppo" else 1
    for k in range(K):
        segment = data[:, k * SEG : (k + 1) * SEG]
        for _ in range(epochs):
            total(loss_fn(segment.clone())).backward()
    got = grads(compared)

    # Reference: plain autograd over the whole episode, then the same loss on each segment.
    for m in (actor, critic):
        m.zero_grad()
    features, ref_loss = bptt_reference_loss(kind, stem, rec, policy_head, value_head, data)
    for k in range(K):
        segment = data[:, k * SEG : (k + 1) * SEG].exclude("features").clone()
        segment["features"] = features[:, k * SEG : (k + 1) * SEG]
        (epochs * total(ref_loss(segment))).backward(retain_graph=True)
    want = grads(compared)

    assert rec.core.cell.weight_ih.grad.abs().sum() > 0
    for name, g in want.items():
        err = float((got[name] - g).norm() / g.norm().clamp_min(1e-300))
        assert err <= 1e-9, (name, err)


def test_tbptt_module_differs_from_full_bptt():
    """Sanity: the same check fails for the truncated baseline (so the test has teeth)."""
    stem, rec, policy_head, value_head, actor, critic = build(ELSTMModule, gradient="tbptt")
    data = act(actor, K * SEG, torch.Generator().manual_seed(1))
    loss_fn = make_loss("a2c", actor, critic)
    for k in range(K):
        total(loss_fn(data[:, k * SEG : (k + 1) * SEG].clone())).backward()
    got = rec.core.cell.weight_ih.grad.clone()
    rec.zero_grad()
    features, ref_loss = bptt_reference_loss("a2c", stem, rec, policy_head, value_head, data)
    for k in range(K):
        segment = data[:, k * SEG : (k + 1) * SEG].exclude("features").clone()
        segment["features"] = features[:, k * SEG : (k + 1) * SEG]
        total(ref_loss(segment)).backward(retain_graph=True)
    want = rec.core.cell.weight_ih.grad
    assert float((got - want).norm() / want.norm()) > 1e-4
