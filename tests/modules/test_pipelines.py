"""Real TorchRL pipelines on the RTRL module (CartPole, float64, parameters held fixed).

Each test runs a TorchRL pipeline (collector, replay buffer, sampler, transform, value estimator,
loss) on an agent with ``ELSTMModule``, then the same pipeline on the same agent with the
:class:`pipelines.ReferenceModule` (plain autograd) in its place, and asserts that

* the gradients of the recurrent core and heads are the reference ones (relative error <= 1e-9):
  full BPTT from the episode start where the module reports exact RTRL, BPTT from the stored state
  as a constant where it reports a truncated start;
* the module reports the exact / truncated segment starts (and causes, warnings) predicted from
  the data.

The stem's gradient is compared only where every segment starts from a constant state: RTRL gives
the inputs their in-segment gradient, not full BPTT's.
"""

import warnings

import pytest
import torch
from pipelines import (
    EMBED,
    HIDDEN,
    Agent,
    add,
    assert_grads_equal,
    check_warnings,
    continuing_rows,
    grads_of,
    loss_total,
    make_env,
    make_serial_env_2,
    make_single_env,
    predicted_starts,
    relative_error,
    reported,
    zero_grads,
)
from tensordict import TensorDict
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import ParallelEnv
from torchrl.envs.transforms import BurnInTransform
from torchrl.modules import ProbabilisticActor, set_recurrent_mode
from torchrl.objectives import ClipPPOLoss, DQNLoss
from torchrl.objectives.value import GAE

from rtrl_modules import TruncatedGradientError, TruncatedGradientWarning
from rtrl_modules.core import bptt_reference
from rtrl_modules.training import SLOT_KEY, EnvSlot

SLICE = 6


# ------------------------------------------------------------------------------------------ DQN
@pytest.fixture(scope="module")
def dqn_replay():
    """Two batches of a greedy recurrent Q-policy on CartPole in a replay buffer, and 8 slices of
    SLICE steps sampled from it (SliceSampler marks each slice start with is_init)."""
    agent = Agent(seed=0)
    env = make_env(categorical=False)
    env.set_seed(0)
    qnet = agent.qnet(env.action_spec)
    collector = Collector(env, qnet, frames_per_batch=100, total_frames=200)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(1000),
        sampler=SliceSampler(slice_len=SLICE, traj_key=("collector", "traj_ids")),
        batch_size=8 * SLICE,
    )
    for data in collector:
        buffer.extend(data)
    collector.shutdown()
    torch.manual_seed(3)
    sample = buffer.sample()
    starts = sample["recurrent_state"].reshape(8, SLICE, -1)[:, 0]
    episode = ~starts.ne(0).any(-1)
    assert episode.any() and (~episode).any(), "need slices at episode starts and mid-episode"
    return env.action_spec, sample


@pytest.mark.parametrize("layout", ["slices", "flat"])
@pytest.mark.parametrize("double_dqn", [False, True])
def test_recurrent_dqn_with_slice_sampler(dqn_replay, double_dqn, layout):
    """DQNLoss (delay_value, optionally double DQN) on SliceSampler slices, [8, SLICE] or the flat
    [8 * SLICE] sample: every start is a constant (zero or stored), so all gradients, the stem's
    too, are the reference's; the target net(s) on step_mdp(batch) count nothing."""
    action_spec, sample = dqn_replay
    batch = sample.reshape(-1, SLICE) if layout == "slices" else sample
    agent = Agent(seed=0)
    rec = agent.rec
    loss = DQNLoss(agent.qnet(action_spec), action_space=action_spec, delay_value=True, double_dqn=double_dqn)
    ref_loss = DQNLoss(
        agent.qnet(action_spec, agent.reference()),
        action_space=action_spec,
        delay_value=True,
        double_dqn=double_dqn,
    )
    compared = {"stem": agent.stem, "core": rec.core, "head": agent.q_head}

    with pytest.warns(TruncatedGradientWarning, match="is_init marks a step whose stored state"):
        loss(batch.clone())["loss"].backward()  # online net on the batch, target net(s) on its next step
    got = grads_of(compared)
    # Every slice start is is_init: exact on an episode start (zero state), else "restart".
    want_starts = predicted_starts(batch)
    assert want_starts["exact"] > 0 and want_starts["restart"] > 0
    assert reported(rec) == want_starts
    assert agent.calls == (3 if double_dqn else 2)  # the online, gradient-enabled call counts

    zero_grads(*compared.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DQNLoss: "no target network updater"
        ref_loss(batch.clone())["loss"].backward()
    assert_grads_equal(got, grads_of(compared))

    strict = Agent(seed=0, strict=True)
    strict_loss = DQNLoss(strict.qnet(action_spec), action_space=action_spec, delay_value=True)
    with pytest.raises(TruncatedGradientError, match="strict=True"):
        strict_loss(batch.clone())


# ------------------------------------------------------------------------------------------ PPO
def collect(agent, env, batches: int, steps: int, **collector_kwargs):
    """``batches`` consecutive on-policy [num_envs, steps] batches of the agent's policy."""
    frames = env.batch_size.numel() * steps
    collector = Collector(
        env, agent.policy(), frames_per_batch=frames, total_frames=batches * frames, **collector_kwargs
    )
    out = [data.clone() for data in collector]
    collector.shutdown()
    return out


PPO_KWARGS = dict(entropy_coeff=0.01, critic_coeff=0.5, loss_critic_type="l2")


def ppo_losses(agent, carry=True, **kwargs):
    """ClipPPOLoss on the RTRL agent and the same loss on the reference agent (shared parameters)."""
    kwargs = {**PPO_KWARGS, **kwargs}
    ref = agent.reference(carry)
    return (
        ClipPPOLoss(agent.policy(), agent.critic(), **kwargs),
        ClipPPOLoss(agent.policy(ref), agent.critic(ref), **kwargs),
        ref,
    )


def advantages(agent, batch, shifted=False, grad=False):
    """GAE on the batch in place (recurrent mode, as inside a loss); under no_grad unless ``grad``."""
    gae = GAE(
        gamma=0.99,
        lmbda=0.95,
        value_network=agent.critic(),
        shifted=shifted,
        deactivate_vmap=True,
        differentiable=grad,
    )
    before, calls = reported(agent.rec), agent.calls
    with set_recurrent_mode(True), torch.set_grad_enabled(grad):
        gae(batch)
    assert agent.calls - calls == (1 if shifted else 2)  # [T + 1] / root and next views
    assert reported(agent.rec) == before  # the value net ran frozen: nothing counted (or stored)
    return batch


def train(agent, loss, batches, epochs=2, prepare=None):
    """RTRL pass: for each batch in order, ``prepare`` (e.g. GAE) then ``epochs`` loss calls, each
    followed by its backward. Returns the segment starts the module must have reported (each loss
    call runs the module twice: actor and critic), checked after every batch."""
    want = before = reported(agent.rec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch, cont in zip(batches, continuing_rows(batches)):
            if prepare is not None:
                prepare(batch)
            for _ in range(epochs):
                calls = agent.calls
                loss_total(loss(batch.clone())).backward()
                assert agent.calls - calls == 2
                want = add(want, predicted_starts(batch, cont), 2)
            assert reported(agent.rec) == want
    check_warnings(caught, before, want)
    return want


def reference(ref_loss, batches, epochs=2):
    """Reference pass: the same loss calls on the same (prepared) batches; the graph is kept, since
    continuing segments start from the previous segments' differentiable states."""
    for batch in batches:
        for _ in range(epochs):
            loss_total(ref_loss(batch.clone())).backward(retain_graph=True)


def full_episode_bptt(agent, batches, epochs=2, plan=None):
    """Independent oracle for consecutive [E, T] batches: the whole rollout's features by one plain
    autograd unroll from the episode starts, fed to a ClipPPOLoss on the heads alone. ``plan``: per
    batch, the env rows of each loss call (minibatches), else ``epochs`` calls on the whole batch."""
    whole = torch.cat(batches, -1)
    rows = whole.reshape(-1, whole.shape[-1])
    features, _ = bptt_reference(
        agent.rec.core, agent.embed(rows["observation"]), rows["is_init"].squeeze(-1)
    )
    features = features.reshape(*whole.shape, -1)
    actor = ProbabilisticActor(
        agent.policy_head,
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    loss = ClipPPOLoss(actor, agent.value_head, **PPO_KWARGS)
    steps = batches[0].shape[-1]
    for k, batch in enumerate(batches):
        td = batch.exclude("features").clone()
        td["features"] = features[..., k * steps : (k + 1) * steps, :]
        for rows in [slice(None)] * epochs if plan is None else plan[k]:
            loss_total(loss(td[rows].clone())).backward(retain_graph=True)


def compared(agent):
    return {"core": agent.rec.core, "policy": agent.policy_head, "value": agent.value_head}


@pytest.mark.parametrize(
    "gae_mode",
    [
        "unshifted",
        "shifted",
        # GAE(differentiable=True) called with autograd on: the critic runs under hold_out_net
        "with_grad",
    ],
)
def test_ppo_with_gae_on_consecutive_batches_is_full_bptt(gae_mode):
    """Three consecutive [2, 12] batches of a SerialEnv collector; GAE (no_grad, or with autograd
    on), then ClipPPOLoss for two epochs each: every start is exact and the summed gradient is
    full-episode BPTT, by the reference and by one whole-rollout unroll."""
    agent = Agent(seed=1)
    env = make_env(2)
    env.set_seed(1)
    batches = collect(agent, env, batches=3, steps=12)
    assert any(b["is_init"][:, 1:].any() for b in batches), "need an episode reset inside a batch"
    assert not batches[1]["is_init"][:, 0].all(), "need an episode that spans two batches"
    loss, ref_loss, ref = ppo_losses(agent)

    def prepare(batch):
        advantages(agent, batch, shifted=gae_mode == "shifted", grad=gae_mode == "with_grad")
        assert ("shifted_valid" in batch.keys()) == (gae_mode == "shifted")

    starts = train(agent, loss, batches, prepare=prepare)
    assert starts["truncated"] == 0 and starts["exact"] > 0
    got = grads_of(compared(agent))

    zero_grads(*compared(agent).values())
    reference(ref_loss, batches)
    assert ref.lookups > 0  # the reference did carry the graph across batches
    assert_grads_equal(got, grads_of(compared(agent)))
    zero_grads(*compared(agent).values())
    full_episode_bptt(agent, batches)
    assert_grads_equal(got, grads_of(compared(agent)))

    if gae_mode == "unshifted":  # the check has teeth: truncating at batch starts differs
        _, truncated_loss, _ = ppo_losses(agent, carry=False)
        zero_grads(*compared(agent).values())
        reference(truncated_loss, batches)
        assert relative_error(got, grads_of(compared(agent))) > 1e-4


def check_on_policy(agent, batches, epochs=2, in_order=True):
    """GAE then PPO on each batch in order: all starts exact, gradients = full-episode BPTT (also
    checked against :func:`full_episode_bptt` when the rows keep their order)."""
    loss, ref_loss, ref = ppo_losses(agent)
    starts = train(agent, loss, batches, epochs, prepare=lambda b: advantages(agent, b))
    assert starts["truncated"] == 0 and starts["exact"] > 0
    got = grads_of(compared(agent))
    zero_grads(*compared(agent).values())
    reference(ref_loss, batches, epochs)
    assert ref.lookups > 0
    assert_grads_equal(got, grads_of(compared(agent)))
    if in_order:
        zero_grads(*compared(agent).values())
        full_episode_bptt(agent, batches, epochs)
        assert_grads_equal(got, grads_of(compared(agent)))


# ------------------------------------------------------------------ multi-process collection
def test_multi_sync_collector_batches_train_with_exact_rtrl():
    """MultiSyncCollector, 2 workers each a SerialEnv of 2 CartPoles, stacked: [2, 2, T] batches."""
    agent = Agent(seed=2)
    steps = 10
    collector = MultiSyncCollector(
        [make_serial_env_2, make_serial_env_2],
        agent.policy(),
        frames_per_batch=4 * steps,
        total_frames=3 * 4 * steps,
        cat_results="stack",
    )
    batches = [data.clone() for data in collector]
    collector.shutdown()
    assert [b.shape for b in batches] == [torch.Size([2, 2, steps])] * 3
    assert not batches[1]["is_init"][..., 0, :].all(), "need an episode that spans two batches"
    check_on_policy(agent, batches)


def test_collector_over_parallel_env_trains_with_exact_rtrl():
    """A Collector over ParallelEnv(2, CartPole): [2, T] batches from worker processes."""
    agent = Agent(seed=3)
    env = ParallelEnv(2, make_single_env)
    env.set_seed(3)
    batches = collect(agent, env, batches=3, steps=10)
    assert [b.shape for b in batches] == [torch.Size([2, 10])] * 3
    assert not batches[1]["is_init"][:, 0].all(), "need an episode that spans two batches"
    check_on_policy(agent, batches)


# ---------------------------------------------------------------------------------- split_trajs
def test_split_trajs_batches_get_the_reference_of_what_is_reported():
    """split_trajs=True: [num_trajs, max_len] rows padded with zeros, ("collector", "mask") marks
    the real steps (the loss masks the rest). A row that starts an episode is exact; a row that
    continues an exact row of the previous batch is exact only if that row was not padded (a
    padded row's last ("next", state) is padding, so the continuation cannot be identified):
    truncated ("unknown") otherwise."""
    agent = Agent(seed=0)
    env = make_env(2)
    env.set_seed(0)
    batches = collect(agent, env, batches=3, steps=16, split_trajs=True)
    cont = continuing_rows(batches)
    middle = [~b["is_init"][:, 0, 0] for b in batches]
    assert sum(int(c.sum()) for c in cont) > 0, "need an exactly continuing row"
    assert sum(int((m & ~c).sum()) for m, c in zip(middle, cont)) > 0, "need a truncated row"
    assert any((~b["collector", "mask"]).any() for b in batches), "need padded rows"

    loss, ref_loss, ref = ppo_losses(agent)
    assert loss.loss_mask_key == "auto"  # finds ("collector", "mask")
    starts = train(agent, loss, batches, prepare=lambda b: advantages(agent, b))
    assert starts["unknown"] > 0 and starts["restart"] == 0
    got = grads_of(compared(agent))
    zero_grads(*compared(agent).values())
    reference(ref_loss, batches)
    assert ref.lookups > 0
    assert_grads_equal(got, grads_of(compared(agent)))


# ----------------------------------------------------------------------------- permuted rows
def test_rows_permuted_between_segments_stay_exact():
    """Batches 2 and 3 with their env rows in another order than batch 1 (no slot_key)."""
    agent = Agent(seed=5)
    env = make_env(3)
    env.set_seed(5)
    batches = collect(agent, env, batches=3, steps=10)
    assert not batches[1]["is_init"][:, 0].all(), "need an episode that spans two batches"
    for batch in batches:
        advantages(agent, batch)
    full_episode_bptt(agent, batches)  # the oracle, on the rows in rollout order
    want = grads_of(compared(agent))
    zero_grads(*compared(agent).values())
    permuted = [batches[0], batches[1][torch.tensor([2, 0, 1])], batches[2][torch.tensor([1, 2, 0])]]
    check_on_policy(agent, permuted, in_order=False)
    assert_grads_equal(grads_of(compared(agent)), want)


# ------------------------------------------------------------------ minibatches of env rows
def test_minibatches_of_env_rows_tagged_by_env_slot_are_full_bptt():
    """PPO-style reuse as the R2AC recipe runs it (``update_epochs`` passes of ``minibatches`` random
    groups of env rows): 4 CartPoles tagged by ``EnvSlot``, an RTRL module with ``slot_key``, 3
    consecutive batches, 2 passes of 2 minibatches each: every start is exact and the summed gradient
    is full-episode BPTT."""
    agent = Agent(seed=6, slot_key=SLOT_KEY)
    env = make_env(4)
    env.append_transform(EnvSlot())
    env.set_seed(6)
    batches = collect(agent, env, batches=3, steps=10)
    assert not batches[1]["is_init"][:, 0].all(), "need an episode that spans two batches"
    for batch in batches:
        advantages(agent, batch)
    gen = torch.Generator().manual_seed(0)
    plan = [
        [rows for _ in range(2) for rows in torch.randperm(4, generator=gen).tensor_split(2)] for _ in batches
    ]
    loss, _, _ = ppo_losses(agent)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedGradientWarning)
        for batch, calls in zip(batches, plan):
            for rows in calls:
                loss_total(loss(batch[rows].clone())).backward()
    assert reported(agent.rec)["truncated"] == 0 and reported(agent.rec)["exact"] >= 3 * 4 * 4
    got = grads_of(compared(agent))
    zero_grads(*compared(agent).values())
    full_episode_bptt(agent, batches, plan=plan)
    assert_grads_equal(got, grads_of(compared(agent)))


# ------------------------------------------------------------------ replay between on-policy
def test_replay_update_between_on_policy_updates_keeps_them_exact():
    """Two on-policy batches (exact), a replay batch of SliceSampler slices of them (exact at
    episode starts, "restart" elsewhere), then the third on-policy batch: still exact."""
    agent = Agent(seed=6)
    env = make_env(2)
    env.set_seed(6)
    batches = collect(agent, env, batches=3, steps=12)
    assert not batches[2]["is_init"][:, 0].all(), "need an episode that spans batches 2 and 3"
    loss, ref_loss, ref = ppo_losses(agent)
    for batch in batches:
        advantages(agent, batch)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(100),
        sampler=SliceSampler(slice_len=5, traj_key=("collector", "traj_ids")),
        batch_size=6 * 5,
    )
    for batch in batches[:2]:
        buffer.extend(batch.reshape(-1))
    torch.manual_seed(6)
    replay = buffer.sample().reshape(6, 5)
    # Each slice is a piece of one trajectory: one id, the state flows, is_init only at its start.
    assert (replay["collector", "traj_ids"] == replay["collector", "traj_ids"][:, :1]).all()
    assert torch.equal(replay["recurrent_state"][:, 1:], replay["next", "recurrent_state"][:, :-1])
    assert replay["is_init"][:, 0].all() and not replay["is_init"][:, 1:].any()
    replay_starts = predicted_starts(replay)
    assert replay_starts["exact"] > 0 and replay_starts["restart"] > 0

    want = train(agent, loss, batches[:2], epochs=1)
    with pytest.warns(TruncatedGradientWarning, match="is_init marks a step whose stored state"):
        loss_total(loss(replay.clone())).backward()
    want = add(want, replay_starts, 2)
    assert reported(agent.rec) == want
    want = add(want, predicted_starts(batches[2], continuing_rows(batches)[2]), 2)
    loss_total(loss(batches[2].clone())).backward()
    assert reported(agent.rec) == want
    assert want["unknown"] == 0  # the third batch continued the second exactly
    got = grads_of(compared(agent))

    zero_grads(*compared(agent).values())
    reference(ref_loss, [*batches[:2], replay, batches[2]], epochs=1)
    assert_grads_equal(got, grads_of(compared(agent)))


# ------------------------------------------------------------------------------------ burn-in
def burn_in_data(burn_in: int):
    """A collected [2, 16] batch, keeping the rows that do not reset during or right after the
    burn-in (SliceSampler slices never do): (agent, rows mask, data)."""
    agent = Agent(seed=7)
    env = make_env(2)
    env.set_seed(7)
    (batch,) = collect(agent, env, batches=1, steps=16)
    rows = ~batch["is_init"][:, 1 : burn_in + 1].any(1).squeeze(-1)
    assert rows.any()
    return agent, rows, batch[rows]


def test_burn_in_transform_starts_a_truncated_segment_from_the_burned_in_state():
    """BurnInTransform(modules=[stem, rec], burn_in=4) on a collected [B, 16] batch: the remaining
    [B, 12] segment starts from the burned-in state, which no trained segment ends with ("unknown"):
    the gradient is BPTT from that state as a constant."""
    burn_in = 4
    agent, rows, data = burn_in_data(burn_in)
    transform = BurnInTransform(modules=[agent.stem, agent.rec], burn_in=burn_in)
    with set_recurrent_mode(True):
        burned = transform(data.clone())
    assert burned.shape[-1] == 16 - burn_in
    # The burned-in state is the state after the burn-in steps from the stored start.
    with torch.no_grad():
        _, c = bptt_reference(
            agent.rec.core,
            agent.embed(data["observation"][:, :burn_in]),
            data["is_init"][:, :burn_in].squeeze(-1),
            restart=data["recurrent_state"][:, :burn_in],
        )
    torch.testing.assert_close(burned["recurrent_state"][:, 0], c, rtol=1e-12, atol=1e-14)
    assert reported(agent.rec) == {"exact": 0, "truncated": 0, "restart": 0, "unknown": 0}  # no_grad

    loss, ref_loss, ref = ppo_losses(agent)
    advantages(agent, burned)
    with pytest.warns(TruncatedGradientWarning, match="matches no carried segment end"):
        loss_total(loss(burned.clone())).backward()
    want = predicted_starts(burned)
    assert want["unknown"] == int(rows.sum()) and want["restart"] == 0
    assert reported(agent.rec) == add({}, want, 2)
    modules = {**compared(agent), "stem": agent.stem}  # every start is a constant: the stem too
    got = grads_of(modules)
    zero_grads(*modules.values())
    reference(ref_loss, [burned], epochs=1)
    assert ref.lookups == 0
    assert_grads_equal(got, grads_of(modules))


def test_burn_in_recomputes_the_state_with_the_current_weights():
    """BurnInTransform exists to refresh stored states with the learner's current weights (as it
    does for LSTMModule); here the weights changed since collection (as after an optimizer step)."""
    burn_in = 4
    agent, rows, data = burn_in_data(burn_in)
    with torch.no_grad():
        agent.rec.core.cell.weight_ih.mul_(1.5)
    with set_recurrent_mode(True):
        burned = BurnInTransform(modules=[agent.stem, agent.rec], burn_in=burn_in)(data.clone())
    with torch.no_grad():
        _, c = bptt_reference(
            agent.rec.core,
            agent.embed(data["observation"][:, :burn_in]),
            data["is_init"][:, :burn_in].squeeze(-1),
            restart=data["recurrent_state"][:, :burn_in],
        )
    assert not torch.equal(burned["recurrent_state"][:, 0], data["recurrent_state"][:, burn_in]), (
        "the burned-in state is the actor's stale stored state"
    )
    torch.testing.assert_close(burned["recurrent_state"][:, 0], c, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------- several forwards, one backward
@pytest.mark.parametrize("gradient", ["rtrl", "rtrl_stepwise"])
def test_two_segments_forward_before_one_backward(gradient):
    """All loss calls (2 epochs) of two consecutive batches, then one backward on their sum; then
    the third batch as usual."""
    agent = Agent(seed=8, gradient=gradient)
    env = make_env(2)
    env.set_seed(8)
    batches = collect(agent, env, batches=3, steps=10)
    assert not batches[1]["is_init"][:, 0].all(), "need an episode that spans two batches"
    loss, ref_loss, ref = ppo_losses(agent)
    cont = continuing_rows(batches)
    want = {}
    pending = []
    for batch, c in zip(batches[:2], cont):
        advantages(agent, batch)
        for _ in range(2):
            pending.append(loss_total(loss(batch.clone())))
            want = add(want, predicted_starts(batch, c), 2)
    sum(pending).backward()
    advantages(agent, batches[2])
    for _ in range(2):
        loss_total(loss(batches[2].clone())).backward()
        want = add(want, predicted_starts(batches[2], cont[2]), 2)
    assert reported(agent.rec) == want and want["truncated"] == 0
    got = grads_of(compared(agent))
    zero_grads(*compared(agent).values())
    reference(ref_loss, batches)
    assert_grads_equal(got, grads_of(compared(agent)))
    zero_grads(*compared(agent).values())
    full_episode_bptt(agent, batches)
    assert_grads_equal(got, grads_of(compared(agent)))


# ------------------------------------------------------------------------ minimal reproduction
def test_frozen_core_under_autograd_touches_nothing():
    """What DQNLoss's target network and GAE's hold_out_net do: a recurrent-mode call with autograd
    on and the core frozen, on rows that continue an episode. It must count and store nothing and
    give the inputs their in-segment gradient (BPTT from the stored state as a constant)."""
    torch.manual_seed(0)
    rec = Agent(seed=0).rec
    x = torch.randn(2, 5, EMBED, dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 5, HIDDEN, dtype=torch.float64)
    is_init = torch.zeros(2, 5, 1, dtype=torch.bool)
    td = TensorDict(embed=x, recurrent_state=state, is_init=is_init, batch_size=[2, 5])
    rec.requires_grad_(False)
    with set_recurrent_mode(True):
        out = rec(td)["features"]
    assert reported(rec) == {"exact": 0, "truncated": 0, "restart": 0, "unknown": 0}
    assert rec.carried.num_slots == 0
    (g,) = torch.autograd.grad(out.sin().sum(), x)
    ref, _ = bptt_reference(rec.core, x, is_init.squeeze(-1), c0=state[:, 0], restart=state)
    (want,) = torch.autograd.grad(ref.sin().sum(), x)
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
