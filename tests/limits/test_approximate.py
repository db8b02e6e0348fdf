"""Approximate RTRL of the dense RNN (SnAp-1, SnAp-2, UORO, KF-RTRL): exact where it must be, unbiased
UORO and KF-RTRL."""

import pytest
import torch
from test_limits_exact import SPLITS, rel, segment_grads

from rtrl_modules.limits import (
    FullyRecurrentRNN,
    approximate_fidelity,
    approximate_sweep,
    bptt_rnn,
    probe_loss,
)
from rtrl_modules.limits.approximate import snap_pattern


@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_snap1_is_exact_for_a_diagonal_recurrence(split):
    """density = 0 leaves only U's diagonal: no unit reaches another, S is element-wise."""
    torch.manual_seed(0)
    model = FullyRecurrentRNN(3, 5, gradient="snap1", density=0.0).double()
    assert torch.count_nonzero(model.recurrent_weight() - torch.diag(model.weight_hh.diagonal())) == 0
    got, full, truncated = segment_grads(model, split, "snap1")
    assert max(rel(got, full).values()) <= 1e-9
    assert max(rel(truncated, full).values()) > 1e-3  # the check has power


@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_snap2_of_a_dense_recurrence_is_exact_rtrl(split):
    """For a dense U every unit is reachable in one step: SnAp-2's pattern is full."""
    torch.manual_seed(0)
    model = FullyRecurrentRNN(3, 5, gradient="snap2").double()
    assert model.initial_state(1)["sensitivity", "weight_hh"].shape == (1, 5, 5, 5)  # r = N
    got, full, _ = segment_grads(model, split, "snap2")
    assert max(rel(got, full).values()) <= 1e-9
    snap1, _, _ = segment_grads(FullyRecurrentRNN(3, 5, gradient="snap1").double(), split, "snap1")
    assert max(rel(snap1, full).values()) > 1e-3  # SnAp-1 is not exact here: the check has power


@pytest.mark.parametrize("split", SPLITS[:2], ids=str)
def test_exact_rtrl_of_a_sparse_recurrence_equals_bptt(split):
    torch.manual_seed(0)
    model = FullyRecurrentRNN(3, 6, density=0.3).double()
    got, full, _ = segment_grads(model, split, "rtrl")
    assert max(rel(got, full).values()) <= 1e-9
    assert (got["weight_hh"] * (1 - model.recurrent_mask)).abs().max() == 0


@pytest.mark.parametrize(("gradient", "exact_steps"), [("snap1", 2), ("snap2", 3), ("kfrtrl", 2)])
def test_snap_n_is_exact_for_the_first_steps_from_zero_sensitivities(gradient, exact_steps):
    """Fully online (1-step segments) from S_0 = 0 on a sparse U: SnAp-n keeps S_1..S_n exactly,
    so the gradient of losses at steps 1..n+1 is exact; one step more and it is not. KF-RTRL's
    S_1 = z_1ᵀ ⊗ D_1 is one Kronecker product: exact, like SnAp-1's."""
    kwargs = {"hidden_size": 8, "segment_length": 1, "density": 0.2, "seed": 3}
    assert approximate_fidelity(gradient, steps=exact_steps, **kwargs)["relative_error"] <= 1e-9
    assert approximate_fidelity(gradient, steps=exact_steps + 1, **kwargs)["relative_error"] > 1e-4
    assert approximate_fidelity("tbptt", steps=2, **kwargs)["relative_error"] > 1e-4  # power


def test_snap_patterns():
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 1]])  # 0 → 1 → 2 (mask[k, i]: i feeds k)
    index, valid = snap_pattern(mask, 3, 1)
    assert index.tolist() == [[0], [1], [2]] and valid.all()
    index, valid = snap_pattern(mask, 3, 2)
    assert index[:, 0].tolist() == [0, 1, 2]  # slot 0 is the row's own unit
    assert [set(index[i][valid[i]].tolist()) for i in range(3)] == [{0, 1}, {1, 2}, {2}]
    index, valid = snap_pattern(mask, 3, 3)
    assert set(index[0][valid[0]].tolist()) == {0, 1, 2}
    assert snap_pattern(None, 4, 2)[0].shape == (4, 4)


@pytest.mark.parametrize("gradient", ["uoro", "kfrtrl"])
def test_random_approximations_are_unbiased(gradient):
    """The mean of many independent UORO (KF-RTRL) estimates approaches exact RTRL within 5 standard
    errors, while SnAp-1 (biased) and a single estimate do not. 1-step segments, float64."""
    torch.manual_seed(0)
    n, d, steps, copies, groups = 4, 3, 6, 64, 40
    model = FullyRecurrentRNN(d, n, gradient=gradient).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, steps, d, generator=gen, dtype=torch.float64)
    weights = torch.randn(1, steps, n, generator=gen, dtype=torch.float64)
    is_init = torch.zeros(1, steps, dtype=torch.bool)
    is_init[:, 0] = True

    def flat_grad():
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        model.zero_grad(set_to_none=False)
        return g

    model.zero_grad(set_to_none=False)
    probe_loss(bptt_rnn(model, x, is_init)[0], weights).backward()
    exact = flat_grad()

    def online(gradient, batch):
        state = model.initial_state(batch, gradient=gradient)
        xb, wb, ib = x.expand(batch, -1, -1), weights.expand(batch, -1, -1), is_init.expand(batch, -1)
        for t in range(steps):
            out, state = model(xb[:, t : t + 1], state, is_init=ib[:, t : t + 1], gradient=gradient)
            probe_loss(out, wb[:, t : t + 1]).backward()
        return flat_grad() / batch

    torch.manual_seed(2)
    means = torch.stack([online(gradient, copies) for _ in range(groups)])  # each: mean of 64 estimates
    mean, se = means.mean(0), means.std(0) / groups**0.5
    assert ((mean - exact).abs() / se).max() < 5
    assert ((online("snap1", 1) - exact).abs() / se).max() > 5  # a biased method fails the same test
    single = online(gradient, 1)
    assert (single - exact).norm() > 10 * (mean - exact).norm()  # one estimate is noisy


def test_modes_states_and_errors():
    valid = "valid choices are rtrl, tbptt, snap1, snap2, uoro, kfrtrl"
    with pytest.raises(ValueError, match=valid):
        FullyRecurrentRNN(3, 5, gradient="snap3")
    model = FullyRecurrentRNN(3, 5, density=0.25)
    with pytest.raises(ValueError, match=valid):
        model(torch.randn(2, 3, 3), gradient="rflo")
    params = sum(p.numel() for p in model.parameters())
    snap1 = model.initial_state(2, gradient="snap1")["sensitivity"]
    assert sum(t[0].numel() for t in snap1.values()) == params  # SnAp-1: one number per parameter
    uoro = model.initial_state(2, gradient="uoro")["sensitivity"]
    assert sum(t[0].numel() for t in uoro.values()) == params + 5  # θ̃ and s̃
    kf = model.initial_state(2, gradient="kfrtrl")["sensitivity"]
    assert kf["kf_state"].shape == (2, 5, 5) and kf["kf_input"].shape == (2, 3 + 5 + 1)  # A, u
    assert model.initial_state(2)["sensitivity", "weight_hh"].shape == (2, 5, 5, 5)  # exact default
    x = torch.randn(2, 4, 3)
    for mode in ("rtrl", "snap1", "snap2", "uoro", "kfrtrl", "tbptt"):
        state = model.initial_state(2, gradient=mode)
        for sl in (slice(0, 2), slice(2, 4)):
            out, state = model(x[:, sl], state, gradient=mode)
            out.square().sum().backward()
        off = model.recurrent_mask == 0
        assert off.any() and model.weight_hh.grad[off].abs().max() == 0  # absent weights get no gradient
        assert torch.isfinite(model.weight_hh.grad).all()
        model.zero_grad()
        with torch.no_grad():
            out, _ = model(x, model.initial_state(2, gradient=mode), gradient=mode)
        assert out.shape == (2, 4, 5)
    assert model.weight_hh[off].abs().max() == 0 and "density=0.25" in repr(model)


def test_approximate_sweep_rows():
    rows = approximate_sweep(gradients=("snap1", "uoro"), hidden_sizes=(4,), steps=(8,), seeds=(0, 1))
    assert [r["gradient"] for r in rows] == ["snap1", "uoro"]
    assert {"cosine", "relative_error", "cosine_hh", "relative_error_hh"} <= set(rows[0])
    assert all(0 < r["relative_error"] < 10 for r in rows)


@pytest.mark.parametrize("mode", ["snap1", "snap2", "uoro", "kfrtrl", "rtrl", "tbptt"])
def test_copy_task_runs_with_the_dense_core(tmp_path, mode):
    import lightning.pytorch as pl

    from recipes.copy_task import CopyTaskData, CopyTaskModule

    torch.manual_seed(0)
    model = CopyTaskModule(
        mode=mode, segment_length=1, cell="dense", density=0.5, hidden_size=6, stop_at_accuracy=None
    )
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = pl.Trainer(
        max_steps=4, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path, **quiet
    )
    trainer.fit(model, CopyTaskData(max_length=3, batch_size=2, val_size=4))
    assert isinstance(model.core, FullyRecurrentRNN) and model.core.gradient == mode
    assert model.summary()["updates"] >= 4
    assert CopyTaskModule().core.__class__.__name__ == "ELSTM"  # the default core is unchanged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "snap1", "segment_length": 1}, "mode='snap1' needs cell='dense'"),
        ({"mode": "rtrl_stepwise", "cell": "dense"}, "mode='rtrl_stepwise' needs cell='elstm'"),
        ({"mode": "uoro", "cell": "dense"}, "needs segment_length"),
        ({"mode": "rtrl", "cell": "lstm"}, "unknown copy-task cell 'lstm'; valid choices are elstm, dense"),
    ],
)
def test_copy_task_dense_core_errors(kwargs, message):
    from recipes.copy_task import CopyTaskModule

    with pytest.raises(ValueError, match=message):
        CopyTaskModule(**kwargs)
