"""What TorchRL code passes to or calls on LSTMModule/GRUModule works on the RTRL modules (or names
the RTRL alternative); step mode (acting) compiles with fullgraph=True and exports."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torchrl.data import Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.envs.utils import step_mdp
from torchrl.modules import GRUModule, LSTMModule, set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module

from rtrl_modules.core import ELSTM
from rtrl_modules.core.checks import check_input
from rtrl_modules.modules import ELSTMModule, IndRNNModule, LRUModule, RTRLModule, SRUModule

D, N, OBS, ACT = 3, 5, 6, 2
CELL_MODULES = [ELSTMModule, IndRNNModule, LRUModule, SRUModule]


def step_td(batch, state=True, is_init=None, gen=None):
    """A collector-style acting tensordict: observation, is_init and (optionally) the state."""
    if is_init is None:
        is_init = torch.rand(*batch, 1, generator=gen) < 0.5
    td = TensorDict(observation=torch.randn(*batch, OBS, generator=gen), is_init=is_init, batch_size=batch)
    if state:
        td["recurrent_state"] = torch.randn(*batch, N, generator=gen)
    return td


def acting_policy(module_cls=ELSTMModule):
    torch.manual_seed(0)
    stem = TensorDictModule(torch.nn.Linear(OBS, D), in_keys=["observation"], out_keys=["embed"])
    core = module_cls(D, N, in_key="embed", out_key="features")
    head = TensorDictModule(torch.nn.Linear(N, ACT), in_keys=["features"], out_keys=["action"])
    return TensorDictSequential(stem, core, head)


# --------------------------------------------------------------------------------------------- keys
def test_default_keys_are_gru_modules():
    ours = ELSTMModule(D, N, in_key="x", out_key="y")
    gru = GRUModule(D, N, in_key="x", out_key="y")
    assert ours.in_keys == gru.in_keys == ["x", "recurrent_state", "is_init"]
    assert ours.out_keys == gru.out_keys == ["y", ("next", "recurrent_state")]
    assert ours.DEFAULT_IN_KEYS == gru.DEFAULT_IN_KEYS
    assert ours.DEFAULT_OUT_KEYS == gru.DEFAULT_OUT_KEYS
    explicit = ELSTMModule(D, N, in_keys=("x", "h"), out_keys=("y", ("next", "h")))
    assert explicit.in_keys == ["x", "h", "is_init"] and explicit.out_keys == ["y", ("next", "h")]
    # Nested keys are unravelled like TorchRL's.
    nested = ELSTMModule(D, N, in_key=("agent", ("embed",)), out_key=("agent", "out"))
    assert nested.in_keys[0] == ("agent", "embed")


@pytest.mark.parametrize(
    "keys, error, match",
    [
        (dict(in_keys="abc", out_key="y"), TypeError, "list or tuple of keys.*in_key='abc'"),
        (dict(in_key="x", out_keys="y"), TypeError, "list or tuple of keys"),
        (dict(in_key=["x"], out_key="y"), TypeError, "in_keys="),
        (dict(in_keys=["x", 3], out_key="y"), TypeError, "str or a tuple of str"),
        (dict(in_keys=["x", ("a", 3)], out_key="y"), TypeError, "str or a tuple of str"),
        (dict(in_keys=["obs", "h", "c"], out_key="y"), ValueError, r"LSTMModule's \[value, h, c\].*single"),
        (dict(in_keys=["obs", "h", "c", "is_init"], out_key="y"), ValueError, r"h, c, is_init.*single"),
        (dict(in_key="x", out_keys=["y", ("next", "h"), ("next", "c")]), ValueError, "next_h, next_c"),
        (dict(in_keys=["x"], out_key="y"), ValueError, r"\[value, state\]"),
        (dict(in_key="x", out_keys=["y"]), ValueError, r"\('next', state\)"),
        (dict(in_keys=["x", "x"], out_key="y"), ValueError, "distinct"),
        (dict(in_keys=["x", "h"], in_key="x", out_key="y"), ValueError, "exactly one of in_key"),
        (dict(in_key="x"), ValueError, "exactly one of out_key"),
    ],
)
def test_bad_keys_are_rejected_with_the_single_state_layout(keys, error, match):
    with pytest.raises(error, match=match):
        ELSTMModule(D, N, **keys)


def test_lstm_style_message_explains_the_single_state_key():
    with pytest.raises(ValueError) as info:
        ELSTMModule(D, N, in_keys=["obs", "h", "c"], out_keys=["y", ("next", "h"), ("next", "c")])
    message = str(info.value)
    assert "single recurrent state" in message and "out_keys=[out, ('next', state)]" in message


def test_is_init_key_can_be_nested_or_named():
    m = ELSTMModule(D, N, in_keys=["x", "h", ("agent", "is_init")], out_keys=["y", ("next", "h")])
    assert m.is_init_key == ("agent", "is_init")
    named = ELSTMModule(D, N, in_keys=["x", "h", "first"], out_keys=["y", ("next", "h")], is_init_key="first")
    assert named.is_init_key == "first"
    appended = ELSTMModule(D, N, in_keys=["x", "h"], out_keys=["y", ("next", "h")], is_init_key="first")
    assert appended.in_keys == ["x", "h", "first"]
    td = TensorDict(x=torch.randn(2, D), first=torch.ones(2, 1, dtype=torch.bool), batch_size=[2])
    assert appended(td)["y"].shape == (2, N)


# ------------------------------------------------------------------------------------------ primer
def test_primer_follows_lstm_module_conventions():
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    primer = m.make_tensordict_primer()
    reference = LSTMModule(D, N, in_key="x", out_key="y").make_tensordict_primer()
    assert isinstance(primer, TensorDictPrimer) and type(primer) is type(reference)
    assert primer.expand_specs == reference.expand_specs is True
    assert primer.device is None and reference.device is None  # both follow the env's device
    spec = primer.primers["recurrent_state"]
    assert isinstance(spec, Unbounded) and spec.shape == (N,) and spec.dtype == torch.float32
    assert primer.default_value == {"recurrent_state": 0.0}
    double = ELSTMModule(D, N, in_key="x", out_key="y", dtype=torch.float64).make_tensordict_primer()
    assert double.primers["recurrent_state"].dtype == torch.float64
    nested = ELSTMModule(D, N, in_keys=["x", ("agent", "rs")], out_keys=["y", ("next", "agent", "rs")])
    assert nested.make_tensordict_primer().primers["agent", "rs"].shape == (N,)
    with pytest.raises(RuntimeError, match=r"out_keys\[1\] == \('next', \*in_keys\[1\]\)"):
        ELSTMModule(D, N, in_keys=["x", "h"], out_keys=["y", "h_out"]).make_tensordict_primer()


def test_get_primers_from_module_finds_the_primer():
    policy = acting_policy()
    primers = get_primers_from_module(policy)
    assert isinstance(primers, TensorDictPrimer)
    assert set(primers.primers.keys()) == {"recurrent_state"}
    assert primers.primers["recurrent_state"].shape == (N,)


# ------------------------------------------------------------------------------------ constructor
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=1, bias=True, batch_first=True, dropout=0, proj_size=0, bidirectional=False),
        dict(python_based=True),
        dict(python_based=False),
        dict(recurrent_backend="auto"),
        dict(recurrent_backend="pad"),
        dict(recurrent_backend="scan"),
        dict(recurrent_backend="triton"),
        dict(recurrent_compute_dtype=torch.bfloat16, recurrent_matmul_precision="tf32"),
        dict(recurrent_recompute="none"),
        dict(default_recurrent_mode=False),
        dict(lstm=None, gru=None),
        dict(device="cpu", dtype=torch.float32),
    ],
)
@pytest.mark.parametrize("cls", CELL_MODULES)
def test_lstm_module_keywords_are_accepted(cls, kwargs):
    m = cls(D, N, in_key="x", out_key="y", **kwargs)
    td = TensorDict(x=torch.randn(2, D), is_init=torch.ones(2, 1, dtype=torch.bool), batch_size=[2])
    assert m(td)["y"].shape == (2, N)
    for name in ("recurrent_backend", "recurrent_compute_dtype", "recurrent_recompute"):
        assert hasattr(m, name)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_layers=2), ValueError, "rtrl_modules.limits.StackedELSTM"),
        (dict(num_layers=0), ValueError, "positive"),
        (dict(bias=False), ValueError, "bias=True"),
        (dict(batch_first=False), ValueError, "batch-first"),
        (dict(dropout=0.1), ValueError, r"nn.Dropout"),
        (dict(proj_size=4), ValueError, r"nn.Linear\(hidden_size, proj_size\)"),
        (dict(bidirectional=True), ValueError, "forward in time"),
        (dict(recurrent_backend="cudnn"), ValueError, "'auto', 'pad', 'scan', 'triton'"),
        (dict(recurrent_recompute="full"), ValueError, "use 'none'"),
        (dict(recurrent_matmul_precision="fp8"), ValueError, "'tf32'"),
        (dict(lstm=torch.nn.LSTM(D, N, batch_first=True)), TypeError, r"ELSTMModule\(input_size"),
        (dict(gru=torch.nn.GRU(D, N, batch_first=True)), TypeError, "RTRLModule"),
        (dict(dtype=torch.int64), TypeError, "floating-point"),
    ],
)
def test_unsupported_lstm_module_keywords_name_the_alternative(kwargs, error, match):
    with pytest.raises(error, match=match):
        ELSTMModule(D, N, in_key="x", out_key="y", **kwargs)


def test_device_and_dtype_build_the_parameters_there():
    meta = ELSTMModule(D, N, in_key="x", out_key="y", device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())
    double = LRUModule(D, N, in_key="x", out_key="y", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
    td = TensorDict(x=torch.randn(2, D, dtype=torch.float64), is_init=torch.ones(2, 1, dtype=torch.bool))
    assert double(td.auto_batch_size_())["y"].dtype == torch.float64
    moved = RTRLModule(ELSTM(D, N), in_key="x", out_key="y", dtype=torch.float64)
    assert moved.core.cell.weight_ih.dtype == torch.float64


def test_lstm_module_methods_exist_and_behave_alike():
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    # Every public name LSTMModule adds over TensorDictModuleBase exists here too.
    public = {a for a in set(dir(LSTMModule)) - set(dir(TensorDictModuleBase)) if not a.startswith("_")}
    assert public <= set(dir(m)), public - set(dir(m))
    assert m.make_python_based() is m and m.make_cudnn_based() is m
    for module in (m, LSTMModule(D, N, in_key="x", out_key="y")):
        with pytest.raises(RuntimeError, match="set_recurrent_mode"):
            module.set_recurrent_mode(True)
        with pytest.raises(RuntimeError, match="set_recurrent_mode"):
            module.recurrent_mode = True
        with pytest.raises(RuntimeError, match="recurrent_mode"):
            module.temporal_mode  # noqa: B018
    assert not m.recurrent_mode
    with set_recurrent_mode(True):
        assert m.recurrent_mode
    assert ELSTMModule(D, N, in_key="x", out_key="y", default_recurrent_mode=True).recurrent_mode
    assert m.canonical_keys == [*m.in_keys, *m.out_keys]
    data = TensorDict(x=torch.randn(D, 3).t(), other=torch.randn(4, 3).t(), batch_size=[3])
    canon = m.canonicalize(data)
    assert canon["x"].is_contiguous() and not data["x"].is_contiguous()
    assert canon["other"] is data["other"]  # only the module's keys are touched


# ------------------------------------------------------------------------------------- step mode
def test_multidimensional_batches_and_nested_keys_in_step_mode():
    torch.manual_seed(0)
    m = ELSTMModule(
        D,
        N,
        in_keys=[("agent", "embed"), ("agent", "rs")],
        out_keys=[("agent", "out"), ("next", "agent", "rs")],
    )
    gen = torch.Generator().manual_seed(0)
    is_init = torch.tensor([[True, False, False], [False, True, False]])[..., None]
    td = TensorDict(
        agent=TensorDict(embed=torch.randn(2, 3, D, generator=gen), rs=torch.randn(2, 3, N, generator=gen)),
        is_init=is_init,
        batch_size=[2, 3],
    )
    out = m(td.clone())
    assert out["agent", "out"].shape == (2, 3, N) and out["next", "agent", "rs"].shape == (2, 3, N)
    flat = m(td.reshape(-1).clone())  # same rows as a [6] batch
    torch.testing.assert_close(out["agent", "out"].reshape(6, N), flat["agent", "out"])
    # Against the core: one step from the stored state, zeroed where an episode starts.
    c0 = torch.where(is_init, 0.0, td["agent", "rs"]).reshape(6, N)
    ref, state = m.core(
        td["agent", "embed"].reshape(6, 1, D), TensorDict(c=c0, batch_size=[6]), gradient="tbptt"
    )
    torch.testing.assert_close(out["agent", "out"].reshape(6, N), ref[:, 0])
    torch.testing.assert_close(out["next", "agent", "rs"].reshape(6, N), state["c"])
    # The env's step_mdp moves ("next", "agent", "rs") to ("agent", "rs"): the state flows.
    nxt = step_mdp(out, keep_other=True, exclude_action=False)
    assert torch.equal(nxt["agent", "rs"], out["next", "agent", "rs"])


def test_keyword_call_returns_the_out_keys():
    m = ELSTMModule(D, N, in_key="x", out_key="y")
    td = TensorDict(
        x=torch.randn(4, D), is_init=torch.zeros(4, 1, dtype=torch.bool), recurrent_state=torch.randn(4, N)
    ).auto_batch_size_()
    y, nxt = m(x=td["x"], is_init=td["is_init"], recurrent_state=td["recurrent_state"])
    ref = m(td.clone())
    torch.testing.assert_close(y, ref["y"])
    torch.testing.assert_close(nxt, ref["next", "recurrent_state"])


def test_finiteness_is_checked_on_the_learner_path_only():
    bad = torch.full((2, 1, D), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        check_input(bad, D, torch.float32)  # autograd on: the learner path
    with torch.no_grad():
        check_input(bad, D, torch.float32)  # acting: no host sync, no data-dependent branch
        with pytest.raises(ValueError, match="NaN"):
            check_input(bad, D, torch.float32, check_finite=True)
    check_input(bad, D, torch.float32, check_finite=False)


def test_compiled_acting_policy_matches_eager():
    policy = acting_policy()
    gen = torch.Generator().manual_seed(1)
    compiled = torch.compile(policy, fullgraph=True)
    with torch.no_grad():
        for td in (step_td([4], gen=gen), step_td([2, 3], gen=gen)):
            eager = policy(td.clone())
            traced = compiled(td.clone())
            for key in ("action", "features", ("next", "recurrent_state")):
                torch.testing.assert_close(traced[key], eager[key])
        # First step of every episode, no state yet (before the primer's zeros): starts from zeros.
        fresh = step_td([4], state=False, is_init=torch.ones(4, 1, dtype=torch.bool), gen=gen)
        torch.testing.assert_close(compiled(fresh.clone())["action"], policy(fresh.clone())["action"])


def test_exported_acting_policy_matches_eager():
    policy = acting_policy()
    gen = torch.Generator().manual_seed(2)
    # TorchRL's export pattern: keyword tensors in, the selected out_keys out (one env, batch []).
    single = policy.select_out_keys("action", ("next", "recurrent_state"))
    td = step_td([], gen=gen)
    exported = torch.export.export(single, args=(), kwargs=dict(td.items()), strict=False).module()
    for td in (step_td([], gen=gen), step_td([], is_init=torch.ones(1, dtype=torch.bool), gen=gen)):
        action, state = exported(**dict(td.items()))
        eager = policy(td.clone())
        torch.testing.assert_close(action, eager["action"])
        torch.testing.assert_close(state, eager["next", "recurrent_state"])

    # A batch of envs: say the batch size when building the tensordict.
    class Acting(torch.nn.Module):
        def __init__(self, policy):
            super().__init__()
            self.policy = policy

        def forward(self, observation, is_init, recurrent_state):
            td = TensorDict(
                observation=observation,
                is_init=is_init,
                recurrent_state=recurrent_state,
                batch_size=observation.shape[:-1],
            )
            td = self.policy(td)
            return td["action"], td["next", "recurrent_state"]

    td = step_td([4], gen=gen)
    args = (td["observation"], td["is_init"], td["recurrent_state"])
    batched = torch.export.export(Acting(policy), args=args, strict=False).module()
    td = step_td([4], gen=gen)
    action, state = batched(td["observation"], td["is_init"], td["recurrent_state"])
    eager = policy(td.clone())
    torch.testing.assert_close(action, eager["action"])
    torch.testing.assert_close(state, eager["next", "recurrent_state"])


def test_torchrl_export_tutorial_pattern_with_batch_size_transforms():
    """TorchRL's export tutorial wraps its recurrent policy in BatchSizeTransforms (unsqueeze, then
    squeeze), with a state key that is not under "next" and a scalar is_init; the module drops in."""
    from torchrl.envs import BatchSizeTransform

    torch.manual_seed(0)
    rec = ELSTMModule(6, 16, in_keys=["observation", "hidden"], out_keys=["intermediate", "hidden"])
    policy = TensorDictSequential(
        BatchSizeTransform(reshape_fn=lambda x: x.unsqueeze(0)),
        rec.make_python_based(),
        TensorDictModule(torch.nn.Linear(16, 3), in_keys=["intermediate"], out_keys=["action"]),
        BatchSizeTransform(reshape_fn=lambda x: x.squeeze(0)),
    )
    policy.select_out_keys("action", "hidden")
    kwargs = {
        "observation": torch.randn(6),
        "hidden": torch.randn(16),
        "is_init": torch.zeros((), dtype=torch.bool),
    }
    eager = policy(**kwargs)
    exported = torch.export.export(policy, args=(), kwargs=kwargs, strict=False)
    for got, want in zip(exported.module()(**kwargs), eager):
        torch.testing.assert_close(got, want)


def test_segment_counts_are_found_inside_torchrl_losses():
    """DQNLoss keeps its value network outside ``_modules``; the counts are still found."""
    from torchrl.data import Categorical
    from torchrl.modules import QValueModule
    from torchrl.objectives import DQNLoss

    from rtrl_modules import segment_start_counts

    rec = ELSTMModule(4, 8, in_key="observation", out_key="features")
    head = TensorDictModule(torch.nn.Linear(8, 2), in_keys=["features"], out_keys=["action_value"])
    policy = TensorDictSequential(rec, head, QValueModule(spec=Categorical(2)))
    loss = DQNLoss(policy, action_space="categorical", delay_value=True)
    rec.segment_starts["exact"] = 3
    assert segment_start_counts(loss)["exact"] == 3
