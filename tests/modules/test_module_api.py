"""The modules' LSTMModule-like contract: keys, modes, errors, carried sensitivities, baselines."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import LSTMModule, set_recurrent_mode

from rtrl_modules.modules import (
    RECURRENT_KINDS,
    ELSTMModule,
    FeedForwardModule,
    IndRNNModule,
    LRUModule,
    RTRLModule,
    SRUModule,
    TruncatedGradientError,
    TruncatedGradientWarning,
    make_recurrent_module,
)

D, N = 3, 5


def step_td(batch, is_init=True, **extra):
    return TensorDict(
        x=torch.randn(*batch, D), is_init=torch.full((*batch, 1), is_init), batch_size=batch, **extra
    )


def seq_td(b, t, gen=None):
    is_init = torch.zeros(b, t, 1, dtype=torch.bool)
    is_init[:, 0] = True
    return TensorDict(
        x=torch.randn(b, t, D, generator=gen),
        is_init=is_init,
        recurrent_state=torch.zeros(b, t, N),
        batch_size=[b, t],
    )


@pytest.mark.parametrize("cls", [ELSTMModule, IndRNNModule, LRUModule, SRUModule])
def test_every_cell_module_steps_and_runs_recurrent(cls, device):
    m = cls(D, N, in_key="x", out_key="y").to(device)
    assert m.in_keys == ["x", "recurrent_state", "is_init"]
    assert m.out_keys == ["y", ("next", "recurrent_state")]
    assert (m.input_size, m.hidden_size) == (D, N)
    td = m(step_td([4]).to(device))
    assert td["y"].shape == (4, N) and td["next", "recurrent_state"].shape == (4, N)
    assert td["y"].device.type == device.type
    td0 = m(step_td([]).to(device))  # an unbatched env
    assert td0["y"].shape == (N,)
    with set_recurrent_mode(True), torch.no_grad():  # acting-style calls: no carried sensitivities
        out = m(seq_td(2, 6).to(device))
        assert out["y"].shape == (2, 6, N)
        assert m(seq_td(2, 6)[0].to(device))["y"].shape == (6, N)  # [T]
        pair = torch.stack([seq_td(2, 6), seq_td(2, 6)]).to(device)
        assert m(pair)["y"].shape == (2, 2, 6, N)  # [.., B, T]
    with set_recurrent_mode(True):  # learner-style call: exact RTRL from the carried store
        out = m(seq_td(2, 6).to(device))
        out["y"].sum().backward()
        assert m.segment_starts == {"exact": 2, "truncated": 0}
        grads = [p.grad for p in m.core.cell.rtrl_parameters().values()]
        assert all(g is not None and g.device.type == device.type for g in grads)


def test_explicit_keys_and_state_flow_in_step_mode():
    m = ELSTMModule(
        D,
        N,
        in_keys=["x", "h", "first"],
        out_keys=["y", ("next", "h")],
        is_init_key="first",
        default_recurrent_mode=False,
    )
    td = TensorDict(x=torch.randn(2, D), first=torch.ones(2, 1, dtype=torch.bool), batch_size=[2])
    m(td)
    h1 = td["next", "h"]
    td2 = TensorDict(x=torch.randn(2, D), h=h1, first=torch.tensor([[False], [True]]), batch_size=[2])
    m(td2)
    # Row 0 continues from h1; row 1 restarts from zeros like a fresh episode.
    fresh = m(TensorDict(x=td2["x"], first=torch.ones(2, 1, dtype=torch.bool), batch_size=[2]))
    assert not torch.allclose(td2["y"][0], fresh["y"][0])
    torch.testing.assert_close(td2["y"][1], fresh["y"][1])
    assert set(m.make_tensordict_primer().primers.keys()) == {"h"}


def test_bad_arguments_name_the_valid_choices():
    with pytest.raises(ValueError, match="rtrl, rtrl_stepwise, tbptt"):
        ELSTMModule(D, N, in_key="x", out_key="y", gradient="bptt")
    with pytest.raises(ValueError, match="exactly one of in_key or in_keys"):
        ELSTMModule(D, N, in_key="x", in_keys=["x", "h"], out_key="y")
    with pytest.raises(ValueError, match="exactly one of out_key"):
        ELSTMModule(D, N, in_key="x")
    with pytest.raises(ValueError, match="rtrl, rtrl_stepwise, tbptt, lstm, feedforward"):
        make_recurrent_module("gru", D, N)
    with pytest.raises(TypeError, match="RTRLCore"):
        RTRLModule(torch.nn.Linear(2, 2), in_key="x", out_key="y")
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    with pytest.raises(KeyError, match="InitTracker"):
        m(TensorDict(x=torch.randn(2, D), batch_size=[2]))
    with pytest.raises(KeyError, match="make_tensordict_primer"):
        m(step_td([2], is_init=False))
    with pytest.raises(ValueError, match="expected"):
        m(step_td([2], recurrent_state=torch.zeros(2, N + 1)))
    with set_recurrent_mode(True), pytest.raises(ValueError, match="time dimension"):
        m(step_td([]))


def test_sensitivities_are_carried_per_env_slot_and_reused_within_a_segment():
    gen = torch.Generator().manual_seed(0)
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    first = seq_td(3, 4, gen)
    with set_recurrent_mode(True):
        m(first)["y"].sum().backward()
        end_after_first = m.carried.end.clone()
        # The next segment continues every env: its t = 0 state is the last ("next", state) (here
        # written by the module itself in TorchRL's layout, as the batch had none).
        second = seq_td(3, 4, gen)
        second["is_init"][:] = False
        second["recurrent_state"][:, 0] = first["next", "recurrent_state"][:, -1]
        m(second)["y"].sum().backward()
        assert (m.carried.start == end_after_first).all()
        end_after_second = m.carried.end.clone()
        m(second)["y"].sum().backward()  # the same segment again (critic call, PPO epoch): same S_0
        assert (m.carried.start == end_after_first).all()
        assert (m.carried.end == end_after_second).all()
        # Nothing is carried without autograd, nor in tbptt mode.
        with torch.no_grad():
            m(seq_td(3, 4, gen))
        assert (m.carried.end == end_after_second).all()


def test_unknown_segment_history_is_truncated_loudly_and_state_round_trips(tmp_path):
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    td = seq_td(2, 3)
    td["is_init"][:] = False
    td["recurrent_state"][:, 0] = 1.0
    with set_recurrent_mode(True), pytest.warns(TruncatedGradientWarning, match="matches no carried"):
        m(td)["y"].sum().backward()
    assert m.segment_starts == {"exact": 0, "truncated": 2}
    assert m.truncation_causes["unknown"] == 2
    assert not m.carried.has_end.any()  # a truncated segment never feeds the store
    strict = ELSTMModule(D, N, in_key="x", out_key="y", strict=True)
    with set_recurrent_mode(True), pytest.raises(TruncatedGradientError, match="strict=True"):
        strict(td)
    m.reset_sensitivities()
    with set_recurrent_mode(True):
        m(seq_td(2, 3))["y"].sum().backward()
    torch.save(m.state_dict(), tmp_path / "ckpt.pt")
    assert m.get_sensitivities()["end"].batch_size == (2,)
    other = ELSTMModule(D, N, in_key="x", out_key="y")
    # A checkpoint restores the carried sensitivities with the weights (plain tensors: weights_only works).
    other.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert (other.get_sensitivities() == m.get_sensitivities()).all()
    m.reset_sensitivities([0])
    assert m.get_sensitivities()["has_end"].tolist() == [False, True]
    assert m.get_sensitivities()["free"].tolist()[0]
    m.set_sensitivities(None)
    assert m.get_sensitivities() is None


def test_slot_key_lets_a_minibatch_hold_a_subset_of_envs():
    gen = torch.Generator().manual_seed(1)
    m = ELSTMModule(D, N, in_key="x", out_key="y", slot_key="env_slot")
    assert m.in_keys[-1] == "env_slot"
    data = seq_td(4, 3, gen)
    data["env_slot"] = torch.arange(4)[:, None].expand(4, 3)
    with set_recurrent_mode(True):
        m(data[2:])["y"].sum().backward()
        m(data[:2])["y"].sum().backward()
        assert m.carried.has_end.all()
        dup = data[:2].clone()
        dup["env_slot"][:] = 0
        with pytest.raises(ValueError, match="same env slot"):
            m(dup)


@pytest.mark.parametrize("kind", RECURRENT_KINDS)
def test_baselines_factory_shares_one_interface(kind):
    m = make_recurrent_module(kind, D, N, in_key="x", out_key="y")
    expected = {"lstm": LSTMModule, "feedforward": FeedForwardModule}.get(kind, ELSTMModule)
    assert isinstance(m, expected)
    if expected is ELSTMModule:
        assert m.gradient == kind
    has_state = kind != "feedforward"
    assert hasattr(m, "make_tensordict_primer") == has_state
    assert m(step_td([2]))["y"].shape == (2, N)
    with set_recurrent_mode(True):
        td = seq_td(2, 4)
        if kind == "lstm":
            td = td.exclude("recurrent_state")
        assert m(td)["y"].shape == (2, 4, N)


def _acted(module, x, is_init, state):
    """What a collector gives the learner: [B, T] with the actor's recurrent_state and its
    ("next", recurrent_state), acting step by step from ``state`` [B, N]."""
    steps = []
    for t in range(x.shape[1]):
        state = torch.where(is_init[:, t], torch.zeros_like(state), state)
        td = TensorDict(x=x[:, t], is_init=is_init[:, t], recurrent_state=state, batch_size=[x.shape[0]])
        with torch.no_grad():
            module(td)
        state = td["next", "recurrent_state"]
        steps.append(td)
    return torch.stack(steps, 1), state


def test_named_slots_keep_envs_apart_when_their_segments_are_identical():
    """Two envs whose episode-start segments are bit-for-bit the same, one call apart: with a slot key
    each restarts its chain in its own slot, so neither continuation is ambiguous."""
    gen = torch.Generator().manual_seed(3)
    m = ELSTMModule(D, N, in_key="x", out_key="y", slot_key="env_slot").double()
    first = torch.randn(1, 3, D, generator=gen, dtype=torch.float64)
    x = [torch.randn(2, 3, D, generator=gen, dtype=torch.float64) for _ in range(3)]
    x[0][0] = first[0]  # env 0 starts an episode with this segment in call 1 ...
    x[1][1] = first[0]  # ... and env 1 with the same segment in call 2
    starts = [torch.tensor([True, True]), torch.tensor([False, True]), torch.tensor([False, False])]
    state = torch.zeros(2, N, dtype=torch.float64)
    for k in range(3):
        is_init = torch.zeros(2, 3, 1, dtype=torch.bool)
        is_init[:, 0, 0] = starts[k]
        batch, state = _acted(m, x[k], is_init, state)
        batch["env_slot"] = torch.arange(2)[:, None].expand(2, 3)
        with set_recurrent_mode(True):
            m(batch)["y"].sum().backward()
    assert m.segment_starts == {"exact": 6, "truncated": 0}, dict(m.truncation_causes)
