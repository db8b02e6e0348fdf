"""Decoupled actors: TorchRL's multi-process collectors (``make_collector(mode="sync"|"async")``) with
learner-carried exact RTRL (float64 CartPole agents of ``pipelines.py``, parameters held fixed).

Two workers, each a SerialEnv of 2 CartPoles tagged with their learner slots (``"env_slot"``), act
with a copy of the policy; the learner trains the R2AC loss on every segment as it arrives (async:
one worker's [2, T] batch at a time, in whatever order the workers deliver), with the sensitivities
carried by the learner or by the actors (shipped once per segment). The gradients must be
full BPTT from each episode start of every env slot: one plain-autograd unroll of each env slot's
whole rollout (its segments in arrival order), fed to the same R2AC loss segment by segment.
"""

import contextlib
import signal
import time

import pytest
import torch
from pipelines import (
    Agent,
    assert_grads_equal,
    grads_of,
    loss_total,
    make_env,
    make_serial_env_2,
    relative_error,
    zero_grads,
)
from tensordict.nn import TensorDictSequential as Seq
from torchrl.modules import set_recurrent_mode

from rtrl_modules.core import bptt_reference
from rtrl_modules.objectives import R2ACLoss
from rtrl_modules.training import SLOT_KEY, EnvSlot, make_collector, segments

WORKERS, ENVS, STEPS = 2, 2, 8
BATCHES = {"sync": 4, "async": 8}  # yielded batches: [4, T] (sync) or one worker's [2, T] (async)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) if the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"multi-process collection took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def network(agent: Agent, rec=None) -> Seq:
    """The R2AC network (logits and state_value from one trunk) around ``rec`` (default: RTRL)."""
    return Seq(agent.stem, rec or agent.rec, agent.policy_head, agent.value_head)


def compared(agent: Agent) -> dict:
    return {"core": agent.rec.core, "policy": agent.policy_head, "value": agent.value_head}


def train_decoupled(mode: str, seed: int, sensitivities: str = "learner"):
    """Collect with 2 workers and train the R2AC loss on each segment as it arrives; returns the
    agent, the loss, the segments [rows, T] in arrival order, the RTRL gradients and (actor-carried)
    the relative difference of the actors' S_0 from the learner's own S_T at each batch."""
    agent = Agent(seed=seed, slot_key=SLOT_KEY)
    loss = R2ACLoss(network(agent))
    policy = agent.policy()
    frames = BATCHES[mode] * ENVS * STEPS * (WORKERS if mode == "sync" else 1)
    collector = make_collector(
        make_serial_env_2, policy, STEPS, frames, mode=mode, num_workers=WORKERS, num_envs=ENVS,
        sensitivities=sensitivities,
    )  # fmt: skip
    collector.set_seed(seed)
    batches, staleness = [], []
    try:
        with deadline(120):
            for batch in segments(collector, policy, weight_update_interval=1):
                batches.append(batch.clone())
                staleness.append(getattr(collector, "actor_staleness", None))
                loss_total(loss(batch)).backward()
    finally:
        collector.shutdown()
    return agent, loss, batches, grads_of(compared(agent)), staleness


def whole_rollout_bptt(agent: Agent, loss: R2ACLoss, batches) -> None:
    """Independent oracle: each env slot's segments (in arrival order) concatenated and unrolled
    once by plain autograd from its episode starts; the R2AC loss of each segment on those features."""
    slots = torch.cat([b[SLOT_KEY][:, 0] for b in batches]).unique().tolist()
    rows = {
        s: [b[(b[SLOT_KEY][:, 0] == s).nonzero().item()] for b in batches if s in b[SLOT_KEY][:, 0]]
        for s in slots
    }
    features = {}
    for slot, segs in rows.items():
        whole = torch.cat(segs, 0).unsqueeze(0)  # [1, L]
        out, _ = bptt_reference(
            agent.rec.core, agent.embed(whole["observation"]), whole["is_init"].squeeze(-1)
        )
        features[slot] = list(out[0].split(STEPS))
    for batch in batches:
        feats = torch.stack([features[s].pop(0) for s in batch[SLOT_KEY][:, 0].tolist()])
        logits = agent.policy_head.module(feats)
        value = agent.value_head.module(feats)
        with torch.no_grad(), set_recurrent_mode(True):  # the loss's bootstrap (no gradient)
            last = batch["next"][:, -1:].select(*loss.agent_network.in_keys, strict=False)
            bootstrap = loss.agent_network(last.clone())["state_value"]
        loss_total(loss.loss_from_outputs(batch, logits, value, bootstrap)).backward(retain_graph=True)


@pytest.mark.parametrize(
    "mode, sensitivities", [("sync", "learner"), ("async", "learner"), ("sync", "actor"), ("async", "actor")]
)
def test_decoupled_collection_trains_with_full_bptt_per_env_slot(mode, sensitivities):
    """Learner-carried: the module follows each env slot across workers. Actor-carried: the actors
    step the sensitivities and ship S_0 once per segment; the learner takes those (it agrees with
    its own S_T to rounding, parameters being fixed)."""
    agent, loss, batches, got, staleness = train_decoupled(mode, seed=4, sensitivities=sensitivities)
    rows = ENVS * (WORKERS if mode == "sync" else 1)
    assert [b.shape for b in batches] == [torch.Size([rows, STEPS])] * BATCHES[mode]
    slots = [b[SLOT_KEY][:, 0].tolist() for b in batches]
    assert sorted({s for row in slots for s in row}) == list(range(WORKERS * ENVS))
    if mode == "async":  # each batch is one worker's envs; both workers delivered
        assert {tuple(s) for s in slots} == {(0, 1), (2, 3)}
    is_init = torch.stack([b["is_init"].squeeze(-1) for b in batches])
    assert is_init[:, :, 1:].any(), "need episode resets inside segments"
    assert not is_init[1:, :, 0].all(), "need episodes that span segments"
    # Every start exact: each row's t = 0 and each reset inside a row; one slot per env.
    starts = int(is_init[:, :, 1:].sum()) + sum(b.shape[0] for b in batches)
    assert agent.rec.segment_starts == {"exact": starts, "truncated": 0}
    assert agent.rec.carried.num_slots == WORKERS * ENVS
    if sensitivities == "actor":  # the actors' S_0 were compared with the learner's own S_T
        measured = [x for x in staleness if x is not None and x == x]
        assert measured and max(measured) <= 1e-10, staleness

    zero_grads(*compared(agent).values())
    whole_rollout_bptt(agent, loss, batches)
    assert_grads_equal(got, grads_of(compared(agent)))

    # The check has teeth: the gradient truncated at every segment start differs.
    truncated = R2ACLoss(network(agent, agent.reference(carry=False)))
    zero_grads(*compared(agent).values())
    for batch in batches:
        loss_total(truncated(batch.clone())).backward()
    assert relative_error(got, grads_of(compared(agent))) > 1e-4


def test_env_slot_tags_each_workers_envs():
    env = make_env(2)
    env.append_transform(EnvSlot(worker=3))
    td = env.rollout(3, break_when_any_done=False)
    assert td[SLOT_KEY].tolist() == [[6, 6, 6], [7, 7, 7]] or td[SLOT_KEY].tolist() == [[6, 7]] * 3
    assert torch.equal(td["next", SLOT_KEY], td[SLOT_KEY])


def test_bad_collection_options_fail_with_one_clear_message():
    agent = Agent(seed=0)
    with pytest.raises(ValueError, match="valid choices are single, sync, async"):
        make_collector(make_serial_env_2, agent.policy(), STEPS, mode="impala")
    with pytest.raises(ValueError, match="num_workers"):
        make_collector(make_env(2), agent.policy(), STEPS, mode="single", num_workers=2)
    with pytest.raises(ValueError, match="picklable env factory"):
        make_collector(make_env(2), agent.policy(), STEPS, mode="async", num_workers=2, num_envs=2)
    with pytest.raises(ValueError, match="weight_update_interval"):
        next(
            segments(make_collector(make_env(2), agent.policy(), STEPS, 2 * STEPS), weight_update_interval=0)
        )


def test_async_workers_wait_for_a_slow_learner_instead_of_dropping_segments():
    """A learner slower than TorchRL's 1 s queue timeout: every worker batch still continues the
    same envs' previous one (TorchRL's own queue of one drops a waiting batch and collects another)."""
    agent = Agent(seed=5, slot_key=SLOT_KEY)
    collector = make_collector(
        make_serial_env_2, agent.policy(), STEPS, 6 * ENVS * STEPS, mode="async", num_workers=WORKERS,
        num_envs=ENVS,
    )  # fmt: skip
    ends = {}
    try:
        with deadline(120):
            for batch in segments(collector, agent.policy()):
                for row in batch:
                    slot = int(row[SLOT_KEY][0])
                    if slot in ends and not row["is_init"][0]:
                        assert torch.equal(row["recurrent_state"][0], ends[slot]), (
                            f"env slot {slot} has a gap"
                        )
                    ends[slot] = row["next", "recurrent_state"][-1].clone()
                time.sleep(1.5)  # the other worker's batch waits in the queue meanwhile
    finally:
        collector.shutdown()
    assert len(ends) == WORKERS * ENVS
