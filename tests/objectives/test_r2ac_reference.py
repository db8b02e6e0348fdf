"""R2AC loss values and gradients against an independent float64 V-trace reference."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rtrl_modules.objectives import R2ACLoss

B, T, F, A = 3, 6, 4, 5


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(F, A + 1)

    def forward(self, obs):
        out = self.net(obs)
        return out[..., :A], out[..., A:]


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(B, T, 1, dtype=torch.bool)
    done[0, 2] = done[2, 5] = done[1, 0] = True
    return TensorDict(
        {
            "observation": torch.randn(B, T, F, generator=g, dtype=torch.float64),
            "action": torch.randint(0, A, (B, T), generator=g),
            "action_log_prob": -torch.rand(B, T, generator=g, dtype=torch.float64) * 2,
            "next": {
                "observation": torch.randn(B, T, F, generator=g, dtype=torch.float64),
                "reward": torch.randn(B, T, 1, generator=g, dtype=torch.float64) * 2,  # some beyond ±1
                "done": done,
                "terminated": done.clone(),
            },
        },
        batch_size=[B, T],
    )


def reference_vtrace(value, bootstrap, reward, done, log_rho, gamma, rho_bar, c_bar):
    """IMPALA eq. (1) written as explicit sums, not as the backward recursion."""
    rho = log_rho.exp()
    clipped_rho, c = rho.clamp(max=rho_bar), rho.clamp(max=c_bar)
    next_v = torch.cat((value[:, 1:], bootstrap), 1)
    disc = gamma * (~done).double()
    delta = clipped_rho * (reward + disc * next_v - value)
    vs = torch.zeros_like(value)
    for b in range(B):
        for s in range(T):
            total, weight = value[b, s].clone(), value.new_ones(1)
            for t in range(s, T):
                total = total + weight * delta[b, t]
                weight = weight * disc[b, t] * c[b, t]
            vs[b, s] = total
    vs_next = torch.cat((vs[:, 1:], bootstrap), 1)
    vs_next = torch.where(done, bootstrap.expand_as(vs_next) * 0 + next_v, vs_next)
    pg_adv = clipped_rho * (reward + disc * vs_next - value)
    return vs, pg_adv


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("rho_bar,reward_scale", [(1.0, 1.0), (0.5, 1.0), (1.0, 3.0)])
def test_loss_and_gradients_equal_reference(reduction, rho_bar, reward_scale, device):
    torch.manual_seed(0)
    heads = Heads().double().to(device)
    agent = TensorDictModule(heads, in_keys=["observation"], out_keys=["logits", "state_value"])
    loss_fn = R2ACLoss(
        agent,
        gamma=0.9,
        rho_thresh=rho_bar,
        c_thresh=0.8,
        entropy_cost=0.03,
        baseline_cost=0.5,
        reward_scale=reward_scale,
        reward_clip=1.0,
        reduction=reduction,
    )
    batch = make_batch().to(device)
    out = loss_fn(batch)
    total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
    total.backward()
    got = {n: p.grad.clone() for n, p in heads.named_parameters()}

    heads.zero_grad()
    logits, value = heads(batch["observation"])
    _, bootstrap = heads(batch["next", "observation"][:, -1:])
    log_probs = logits.log_softmax(-1)
    log_pi = log_probs.gather(-1, batch["action"].unsqueeze(-1))
    reward = (reward_scale * batch["next", "reward"]).clamp(-1, 1)
    done = batch["next", "done"]
    vs, pg_adv = reference_vtrace(
        value.detach(),
        bootstrap.detach(),
        reward,
        done,
        log_pi.detach() - batch["action_log_prob"].unsqueeze(-1),
        0.9,
        rho_bar,
        0.8,
    )
    red = torch.sum if reduction == "sum" else torch.mean
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    want = {
        "loss_objective": -red(log_pi * pg_adv),
        "loss_critic": 0.5 * 0.5 * red((vs - value) ** 2),
        "loss_entropy": -0.03 * red(entropy),
    }
    for key, value_ in want.items():
        torch.testing.assert_close(out[key], value_.detach(), rtol=1e-12, atol=1e-12)
    sum(want.values()).backward()
    for name, p in heads.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)


def test_clipped_surrogate_equals_reference_and_is_the_vtrace_gradient_on_policy():
    torch.manual_seed(0)
    heads = Heads().double()
    agent = TensorDictModule(heads, in_keys=["observation"], out_keys=["logits", "state_value"])
    loss_fn = R2ACLoss(agent, gamma=0.9, entropy_cost=0.0, baseline_cost=0.0, clip_ratio=0.2)
    batch = make_batch()
    out = loss_fn(batch)
    out["loss_objective"].backward()
    got = {n: p.grad.clone() for n, p in heads.named_parameters()}

    heads.zero_grad()
    logits, value = heads(batch["observation"])
    _, bootstrap = heads(batch["next", "observation"][:, -1:])
    log_pi = logits.log_softmax(-1).gather(-1, batch["action"].unsqueeze(-1))
    reward, done = batch["next", "reward"].clamp(-1, 1), batch["next", "done"]
    log_rho = log_pi.detach() - batch["action_log_prob"].unsqueeze(-1)
    vs, _ = reference_vtrace(value.detach(), bootstrap.detach(), reward, done, log_rho, 0.9, 1.0, 1.0)
    advantage = (
        reward + 0.9 * (~done).double() * torch.cat((vs[:, 1:], bootstrap.detach()), 1) - value.detach()
    )
    ratio = (log_pi - batch["action_log_prob"].unsqueeze(-1)).exp()
    want = -torch.min(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage).sum()
    torch.testing.assert_close(out["loss_objective"], want.detach(), rtol=1e-12, atol=1e-12)
    want.backward()
    for name, p in heads.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)
    outside = ((ratio < 0.8) | (ratio > 1.2)).double().mean()
    assert 0 < float(out["clip_fraction"]) == pytest.approx(float(outside))

    # On the batch's first update (the behaviour policy is the current one) both losses have the same
    # gradient: the clipped surrogate only differs once the policy has moved.
    batch["action_log_prob"] = log_pi.detach().squeeze(-1)
    grads = []
    for clip in (None, 0.2):
        heads.zero_grad()
        loss = R2ACLoss(agent, gamma=0.9, entropy_cost=0.0, baseline_cost=0.0, clip_ratio=clip)(batch)
        loss["loss_objective"].backward()
        grads.append([p.grad.clone() for p in heads.parameters()])
        assert float(loss["clip_fraction"]) == 0.0
    for vtrace, clipped in zip(*grads):
        torch.testing.assert_close(vtrace, clipped, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"clip_ratio must be in \(0, 1\) or None, got 1.5"):
        R2ACLoss(agent, clip_ratio=1.5)


def test_masked_reset_transitions_contribute_nothing():
    """An envpool-style reset transition (the step after `done`, mask False) must not be trained on."""
    heads = Heads().double()
    agent = TensorDictModule(heads, in_keys=["observation"], out_keys=["logits", "state_value"])
    loss_fn = R2ACLoss(agent)
    batch = make_batch()
    batch["next", "done"][:, 2] = True  # episodes end at step 2 ...
    batch["mask"] = torch.ones(B, T, dtype=torch.bool)
    batch["mask"][:, 3] = False  # ... so step 3 is the reset transition
    base = loss_fn(batch)
    batch["next", "reward"][:, 3] += 100.0
    batch["action"][:, 3] = (batch["action"][:, 3] + 1) % A
    batch["observation"][:, 3] += 5.0
    changed = loss_fn(batch)
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        torch.testing.assert_close(base[key], changed[key], rtol=1e-12, atol=1e-12)
    del batch["mask"]
    assert not torch.isclose(loss_fn(batch)["loss_critic"], base["loss_critic"])  # the mask did the work


def test_bad_arguments_and_inputs():
    agent = TensorDictModule(Heads(), in_keys=["observation"], out_keys=["logits", "state_value"])
    with pytest.raises(ValueError, match="sum, mean"):
        R2ACLoss(agent, reduction="avg")
    with pytest.raises(ValueError, match="gamma"):
        R2ACLoss(agent, gamma=1.5)
    with pytest.raises(ValueError, match="reward_scale must be positive"):
        R2ACLoss(agent, reward_scale=0.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        R2ACLoss(agent)(make_batch()[:, 0].float())
    batch = make_batch().float()
    del batch["action_log_prob"]
    with pytest.raises(KeyError, match="action_log_prob"):
        R2ACLoss(agent)(batch)


def test_one_step_segments_use_the_td_target():
    """M = 1 (fully online): on-policy V-trace over one step is the TD target r + γ(1 − done) V(x')."""
    torch.manual_seed(1)
    heads = Heads().double()
    agent = TensorDictModule(heads, in_keys=["observation"], out_keys=["logits", "state_value"])
    loss_fn = R2ACLoss(agent, gamma=0.9, entropy_cost=0.0, baseline_cost=1.0, reward_clip=None)
    batch = make_batch()[:, :1]
    logits, value = heads(batch["observation"])
    log_pi = logits.log_softmax(-1).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
    batch["action_log_prob"] = log_pi.detach()  # on-policy: ρ = 1
    _, next_value = heads(batch["next", "observation"])
    target = batch["next", "reward"] + 0.9 * (~batch["next", "done"]).double() * next_value
    out = loss_fn(batch)
    torch.testing.assert_close(out["loss_critic"], 0.5 * (target - value).pow(2).sum().detach())
    advantage = (target - value).detach().squeeze(-1)
    torch.testing.assert_close(out["loss_objective"], -(log_pi * advantage).sum().detach())
