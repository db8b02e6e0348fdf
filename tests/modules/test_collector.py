"""The RTRL module inside TorchRL's Collector on a real gymnasium env (CartPole-v1)."""

import warnings

import pytest
import torch
from tensordict.nn import TensorDictModule as Mod
from tensordict.nn import TensorDictSequential as Seq
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import GymEnv, InitTracker, SerialEnv, TransformedEnv
from torchrl.modules import ProbabilisticActor, set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module

from rtrl_modules.core import bptt_reference
from rtrl_modules.modules import ELSTMModule

HIDDEN = 8


def make_policy(seed=0):
    torch.manual_seed(seed)
    to_double = Mod(lambda o: o.double(), ["observation"], ["obs64"])
    rec = ELSTMModule(4, HIDDEN, in_key="obs64", out_key="features")
    head = Mod(nn.Linear(HIDDEN, 2), ["features"], ["logits"])
    actor = ProbabilisticActor(
        Seq(to_double, rec, head),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    return actor.double(), rec


def check_state_flow(data, rec, first=True):
    """Root state at t = ("next", state) at t-1, zeros where an episode starts; non-trivial values."""
    state, nxt = data["recurrent_state"], data["next", "recurrent_state"]
    is_init = data["is_init"].squeeze(-1)
    assert is_init[..., 1:].any(), "need an episode reset inside the batch"
    assert is_init[..., 0].all() or not first
    assert (state[is_init] == 0).all()
    carried = ~is_init[..., 1:]
    assert torch.equal(state[..., 1:, :][carried], nxt[..., :-1, :][carried])
    assert nxt.abs().sum() > 0
    # The collected features are what a recurrent-mode pass over the batch gives from its first state.
    with set_recurrent_mode(True), torch.no_grad():
        again = rec(data.exclude("features").clone())["features"]
    torch.testing.assert_close(again, data["features"], rtol=1e-10, atol=1e-12)


def test_collector_carries_state_across_steps_and_resets_on_is_init():
    actor, rec = make_policy()
    env = TransformedEnv(GymEnv("CartPole-v1"), InitTracker())
    env.set_seed(0)
    collector = Collector(
        env, actor, frames_per_batch=60, total_frames=60, auto_register_policy_transforms=True
    )
    for data in collector:
        check_state_flow(data.unsqueeze(0), rec)
        assert not any("sensitivity" in str(key) for key in data.keys(True, True))
        assert "recurrent_state" in data.keys()  # the collector found and appended the primer itself
    collector.shutdown()


def test_primer_is_discovered_by_torchrl():
    actor, _ = make_policy()
    primer = get_primers_from_module(actor)
    assert set(primer.primers.keys()) == {"recurrent_state"}
    assert primer.primers["recurrent_state"].shape[-1] == HIDDEN


def test_consecutive_collector_batches_train_with_exact_rtrl():
    """Two consecutive [2, T] batches of a 2-env collector, trained one after the other, give the
    full-BPTT gradient of the concatenated rollout (float64)."""
    actor, rec = make_policy(seed=1)
    env = TransformedEnv(SerialEnv(2, lambda: GymEnv("CartPole-v1")), InitTracker())
    env.set_seed(1)
    env.append_transform(rec.make_tensordict_primer())
    collector = Collector(env, actor, frames_per_batch=2 * 30, total_frames=2 * 60)
    batches = [data.clone() for data in collector]
    collector.shutdown()
    assert [b.batch_size for b in batches] == [torch.Size([2, 30])] * 2
    for k, b in enumerate(batches):
        check_state_flow(b, rec, first=k == 0)
    # Segment 2 continues segment 1 of the same env slot (the learner relies on that).
    first, second = batches
    continuing = ~second["is_init"][:, 0, 0]
    assert continuing.any(), "need an episode that spans the two batches"
    assert torch.equal(
        second["recurrent_state"][:, 0][continuing], first["next", "recurrent_state"][:, -1][continuing]
    )

    weights = torch.randn(2, 60, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with set_recurrent_mode(True):
        for k, batch in enumerate(batches):
            out = rec(batch.exclude("features").clone())["features"]
            (out * weights[:, 30 * k : 30 * (k + 1)]).sum().backward()
    got = {n: p.grad.clone() for n, p in rec.named_parameters()}
    rec.zero_grad()
    whole = torch.cat(batches, 1)
    ref, _ = bptt_reference(rec.core, whole["observation"].double(), whole["is_init"].squeeze(-1))
    (ref * weights).sum().backward()
    for n, p in rec.named_parameters():
        err = float((got[n] - p.grad).norm() / p.grad.norm())
        assert err <= 1e-9, (n, err)


@pytest.mark.parametrize("missing", ["primer", "init_tracker"])
def test_missing_primer_or_init_tracker_is_a_clear_error(missing):
    actor, rec = make_policy()
    env = (
        GymEnv("CartPole-v1")
        if missing == "init_tracker"
        else TransformedEnv(GymEnv("CartPole-v1"), InitTracker())
    )
    match = "make_tensordict_primer" if missing == "primer" else "InitTracker"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyError, match=match):  # at construction (dry run) or at the first steps
            collector = Collector(
                env, actor, frames_per_batch=10, total_frames=10, auto_register_policy_transforms=False
            )
            for _ in collector:
                pass
    with pytest.raises(KeyError, match=match):
        env.rollout(5, actor)
