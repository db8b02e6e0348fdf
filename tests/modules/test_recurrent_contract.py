"""TorchRL's recurrent-mode contract on the RTRL modules (written for this project, after the points
TorchRL's own LSTMModule/GRUModule tests check): step mode ≡ recurrent mode on every batch layout,
``is_init`` restarts from the stored state, the ``("next", state)`` layout, several gradient-enabled
calls before a backward."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp
from torchrl.modules import LSTMModule, set_recurrent_mode

from rtrl_modules import ELSTMModule, TruncatedGradientWarning
from rtrl_modules.core import bptt_reference

D, N = 3, 5


def acted(module, envs, steps, seed=0, reset_prob=0.15):
    """A rollout as a collector writes it: one step at a time, the primer's zeros at resets,
    ("next", state) from the module. Returns a [envs, steps] tensordict (no autograd)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(envs, steps, D, generator=gen, dtype=torch.float64)
    is_init = torch.rand(envs, steps, 1, generator=gen) < reset_prob
    is_init[:, 0] = True
    state = torch.zeros(envs, N, dtype=torch.float64)
    rows = []
    for t in range(steps):
        state = torch.where(is_init[:, t], 0.0, state)
        td = TensorDict(x=x[:, t], is_init=is_init[:, t], recurrent_state=state, batch_size=[envs])
        with torch.no_grad():
            module(td)
        state = td["next", "recurrent_state"]
        rows.append(td)
    data = torch.stack(rows, 1)
    done = torch.zeros_like(is_init)
    done[:, :-1] = is_init[:, 1:]  # an episode ends where the next one starts
    data["next", "done"] = done
    return data


@pytest.fixture
def module():
    torch.manual_seed(0)
    return ELSTMModule(D, N, in_key="x", out_key="y").double()


def recurrent(module, td, grad=False):
    with set_recurrent_mode(True), torch.set_grad_enabled(grad):
        return module(td.clone())


def test_step_and_recurrent_modes_agree_on_every_layout(module):
    data = acted(module, envs=4, steps=9)
    want = data["y"]
    # [B, T]
    torch.testing.assert_close(recurrent(module, data.exclude("y"))["y"], want, rtol=1e-12, atol=1e-12)
    # [T]: one env
    torch.testing.assert_close(recurrent(module, data[2].exclude("y"))["y"], want[2], rtol=1e-12, atol=1e-12)
    # [..., B, T]: extra leading dims are flattened
    stacked = torch.stack([data[:2], data[2:]], 0).exclude("y")
    got = recurrent(module, stacked)["y"]
    torch.testing.assert_close(got.reshape(4, 9, N), want, rtol=1e-12, atol=1e-12)
    # flat [B * T] with is_init at every row start (what SliceSampler returns): each slice restarts
    # from its stored state, so outputs still equal what the actor computed.
    flat = data[:, 3:].exclude("y").clone()
    flat["is_init"][:, 0] = True
    got = recurrent(module, flat.reshape(-1))["y"]
    torch.testing.assert_close(got, want[:, 3:].reshape(-1, N), rtol=1e-12, atol=1e-12)


def test_is_init_restarts_from_the_stored_state_not_from_zeros(module):
    data = acted(module, envs=2, steps=6, reset_prob=0.0)
    view = data[:, 2:].exclude("y").clone()  # starts mid-episode...
    view["is_init"][:, 0] = True  # ...marked as a slice start
    assert bool((view["recurrent_state"][:, 0] != 0).any())
    torch.testing.assert_close(recurrent(module, view)["y"], data["y"][:, 2:], rtol=1e-12, atol=1e-12)


def test_next_state_layout_matches_lstm_module(module):
    data = acted(module, envs=3, steps=8, reset_prob=0.3)
    bare = data.exclude("y", "next")
    out = recurrent(module, bare)
    # LSTMModule's layout: each trajectory's final state at its last step, zeros elsewhere.
    lstm = LSTMModule(D, N, in_key="x", out_key="y").double()
    lstm_td = bare.exclude("recurrent_state").clone()
    lstm_td["recurrent_state_h"] = torch.zeros(3, 8, 1, N, dtype=torch.float64)
    lstm_td["recurrent_state_c"] = torch.zeros(3, 8, 1, N, dtype=torch.float64)
    with set_recurrent_mode(True), torch.no_grad():
        lstm(lstm_td)
    lstm_layout = (lstm_td["next", "recurrent_state_c"] != 0).any(-1).squeeze(-1)
    ours = (out["next", "recurrent_state"] != 0).any(-1)
    assert torch.equal(ours, lstm_layout)
    actor = data["next", "recurrent_state"]
    torch.testing.assert_close(out["next", "recurrent_state"][ours], actor[ours], rtol=1e-12, atol=1e-12)
    # Entries already there (the actor's) are replaced by the recomputed states, as LSTMModule does.
    again = recurrent(module, data.exclude("y"))
    assert torch.equal(again["next", "recurrent_state"], out["next", "recurrent_state"])


def test_several_gradient_calls_before_backward_match_segment_by_segment(module):
    """Two consecutive segments forward (plus a shifted view, as DQNLoss does with step_mdp), then
    one backward: no in-place error, and the gradient equals full BPTT over all segments."""
    data = acted(module, envs=3, steps=12, reset_prob=0.0)
    segments = [data[:, t : t + 4].exclude("y") for t in (0, 4, 8)]
    weights = torch.randn(3, 12, N, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with set_recurrent_mode(True):
        (module(segments[0].clone())["y"] * weights[:, :4]).sum().backward()
        y1 = module(segments[1].clone())["y"]  # its backward is pending while the next call runs
        with pytest.warns(TruncatedGradientWarning, match="is_init marks a step"):
            shifted = step_mdp(segments[1].clone(), keep_other=True)  # next-state view
            shifted["is_init"] = torch.ones_like(shifted["is_init"])  # as GAE/samplers mark it
            shifted["x"] = segments[1]["x"]
            module(shifted)["y"].sum().mul(0).backward()
        y2 = module(segments[2].clone())["y"]
        ((y1 * weights[:, 4:8]).sum() + (y2 * weights[:, 8:]).sum()).backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()
    out, _ = bptt_reference(module.core, data["x"], data["is_init"].squeeze(-1))
    (out * weights).sum().backward()
    for name, p in module.named_parameters():
        err = float((got[name] - p.grad).norm() / p.grad.norm())
        assert err <= 1e-9, (name, err)
    assert module.segment_starts["exact"] == 9  # 3 episode starts + 2 x 3 continuations


def test_calls_without_gradients_or_trainable_parameters_touch_nothing(module):
    data = acted(module, envs=2, steps=4)
    recurrent(module, data.exclude("y"))  # no autograd
    module.requires_grad_(False)
    recurrent(module, data.exclude("y"), grad=True)  # autograd on, nothing to train (a target net)
    assert module.carried.num_slots == 0
    assert module.segment_starts == {"exact": 0, "truncated": 0}


def test_stacked_root_and_next_call_repeats_the_roots_and_truncates_the_next_rows(module):
    """Unshifted GAE with gradients stacks the root and the ("next", ...) views into [2, B, T]: the
    root rows repeat the trained segments (exact), the next-state rows start mid-episode (truncated),
    and the store neither grows nor changes."""
    data = acted(module, envs=3, steps=6, reset_prob=0.0)
    recurrent(module, data.exclude("y"), grad=True)["y"].sum().backward()
    before = module.carried.state()
    root = data.exclude("y", "next").select("x", "is_init", "recurrent_state")
    nxt = root.clone()
    nxt["recurrent_state"] = data["next", "recurrent_state"]
    nxt["x"] = torch.randn_like(root["x"])
    with pytest.warns(TruncatedGradientWarning, match="is_init marks a step"):
        recurrent(module, torch.stack([root, nxt], 0), grad=True)["y"].sum().backward()
    assert module.segment_starts == {"exact": 6, "truncated": 3}
    assert module.carried.num_slots == 3
    assert (module.carried.state().exclude("last_used") == before.exclude("last_used")).all()


def test_envs_in_separate_batches_are_followed_by_their_states(module):
    """Batches from different workers (rows 0..1 are different envs each time, as with an
    asynchronous collector): new episodes take free slots (the batch's ("next", "done") says which
    segments ended), and every continuation is found by its start state and stays exact."""
    first = acted(module, envs=2, steps=8, seed=1, reset_prob=0.0)
    second = acted(module, envs=2, steps=8, seed=2, reset_prob=0.0)
    with set_recurrent_mode(True):
        for td in (first[:, :4], second[:, :4], first[:, 4:], second[:, 4:]):
            module(td.exclude("y").clone())["y"].sum().backward()
    assert module.segment_starts == {"exact": 8, "truncated": 0}
    assert module.carried.num_slots == 4


def test_two_calls_on_a_permuted_batch_keep_one_chain_per_env(module):
    """Actor then critic on the same (permuted) tensordict: the second call sees the states the first
    wrote, not the actor's; episode starts must still map to one chain each, so the next segment is
    found unambiguously."""
    data = acted(module, envs=4, steps=10, seed=3, reset_prob=0.0)
    perm = torch.tensor([2, 0, 3, 1])
    with set_recurrent_mode(True):
        first = data[perm, :5].exclude("y").clone()
        module(first)["y"].sum().backward()
        module(first)["y"].sum().backward()  # ("next", state) is now the module's own
        module(data[:, 5:].exclude("y").clone())["y"].sum().backward()
    assert module.segment_starts == {"exact": 12, "truncated": 0}
    assert module.carried.num_slots == 4


def test_fresh_batches_stay_exact_over_many_segments(module):
    """Many consecutive segments built from fresh tensors each time (memory the allocator reuses): every
    continuation is recognised from the actor's ("next", state), never mistaken for the module's own."""
    gen = torch.Generator().manual_seed(9)
    end = torch.zeros(3, N, dtype=torch.float64)
    with set_recurrent_mode(True):
        for k in range(25):
            state = torch.zeros(3, 4, N, dtype=torch.float64)
            state[:, 0] = end
            is_init = torch.zeros(3, 4, 1, dtype=torch.bool)
            is_init[:, 0] = k == 0
            nxt = torch.randn(3, 4, N, generator=gen, dtype=torch.float64)  # the "actor's" states
            td = TensorDict(
                x=torch.randn(3, 4, D, generator=gen, dtype=torch.float64),
                is_init=is_init,
                recurrent_state=state,
                next=TensorDict(recurrent_state=nxt, batch_size=[3, 4]),
                batch_size=[3, 4],
            )
            module(td.clone())["y"].sum().backward()
            end = nxt[:, -1]
    assert module.segment_starts == {"exact": 75, "truncated": 0}


def test_state_dtype_is_checked_against_the_parameters_not_the_autocast_input():
    """Under autocast the input arrives in bf16 while the state stays in the parameters' dtype: fine.
    A state in another dtype than the parameters (a primer made before .double()) is a clear error."""
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    td = TensorDict(
        x=torch.randn(2, 4, D).bfloat16(),
        is_init=torch.ones(2, 4, 1, dtype=torch.bool),
        recurrent_state=torch.zeros(2, 4, N),
        batch_size=[2, 4],
    )
    with torch.autocast("cpu", dtype=torch.bfloat16), set_recurrent_mode(True):
        m(td)["y"].float().sum().backward()
    assert m.core.cell.weight_ih.grad is not None
    stale = td.exclude("y").clone()
    stale["x"] = stale["x"].double()  # the state stays float32
    with set_recurrent_mode(True), pytest.raises(TypeError, match="make the primer after casting"):
        m.double()(stale)
