"""RTRL gradients against BPTT (float64 ≤ 1e-9, float32 ≤ 1e-4), for every cell and mode."""

import pytest
import torch

import rtrl_modules as rm
from rtrl_modules.cells import ELSTMCell
from rtrl_modules.core import bptt_reference, functional
from rtrl_modules.core.gradcheck import check_restart_gradients

CORES = [rm.ELSTM, rm.IndRNN, rm.LRU, rm.SRU]
SPLITS = [(5, 1, 7, 3), (1, 1, 1, 1, 1, 1, 1), (2, 9, 4)]


@pytest.mark.parametrize("core_cls", CORES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_all_modes_match_bptt_float64(core_cls, split, device):
    torch.manual_seed(1)
    core = core_cls(3, 6).double().to(device)
    report = rm.check_rtrl_gradients(core, batch_size=5, segment_lengths=split, seed=2)
    assert set(report) == {"rtrl", "rtrl_stepwise", "tbptt"}
    for errors in report.values():
        assert max(errors.values()) <= 1e-9


@pytest.mark.parametrize("core_cls", CORES, ids=lambda c: c.__name__)
def test_per_example_carry_and_injection_match_bptt_float64(core_cls, monkeypatch):
    """Sensitivity blocks of [K*N, D] ≥ _PER_EXAMPLE_MIN (paper sizes) take the per-example GEMM carry
    and injection instead of the batched ops: force that path at small sizes."""
    monkeypatch.setattr(functional, "_PER_EXAMPLE_MIN", 0)
    torch.manual_seed(1)
    report = rm.check_rtrl_gradients(
        core_cls(3, 6).double(), batch_size=5, segment_lengths=(5, 1, 7, 3), seed=2
    )
    for errors in report.values():
        assert max(errors.values()) <= 1e-9


def test_per_example_path_at_a_real_input_size_matches_bptt_float64():
    """D = 257 (the agent's stem + previous reward), N = 64: 2·N·D = 32,896 takes the per-example path."""
    assert 2 * 64 * 257 >= functional._PER_EXAMPLE_MIN
    torch.manual_seed(4)
    report = rm.check_rtrl_gradients(
        rm.ELSTM(257, 64).double(), batch_size=4, segment_lengths=(4, 3, 5), seed=5
    )
    for errors in report.values():
        assert max(errors.values()) <= 1e-9


@pytest.mark.parametrize("core_cls", CORES, ids=lambda c: c.__name__)
def test_float32_within_1e_4(core_cls, device):
    torch.manual_seed(3)
    report = rm.check_rtrl_gradients(core_cls(4, 8).to(device), batch_size=3, segment_lengths=(6, 2, 5))
    assert max(max(e.values()) for e in report.values()) <= 1e-4


def test_check_has_power_untruncated_differs_from_truncated():
    """The full-BPTT gradient of the recurrent weights must differ clearly from the truncated one,
    otherwise agreement with it would prove nothing."""
    torch.manual_seed(0)
    core = rm.ELSTM(3, 6).double()
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    is_init = torch.zeros(2, 12, dtype=torch.bool)

    def grad(truncate: bool):
        core.zero_grad()
        out_a, c_mid = bptt_reference(core, x[:, :4], is_init[:, :4])
        out_b, _ = bptt_reference(core, x[:, 4:], is_init[:, 4:], c_mid.detach() if truncate else c_mid)
        (out_a.pow(2).sum() + out_b.pow(2).sum()).backward()
        return core.cell.weight_ih.grad.clone()

    full, truncated = grad(False), grad(True)
    assert (full - truncated).norm() / full.norm() > 1e-3


class PrintedEquationELSTMCell(ELSTMCell):
    """The eLSTM with the paper's early printed Jacobian, which omits the w_z ⊙ ẑ term."""

    def local_derivatives(self, pre, c_prev, params):
        jacobian, d_pre, d_params = super().local_derivatives(pre, c_prev, params)
        z_hat = d_pre[..., 0, :]
        return jacobian - params["weight_hh"][..., 0, :] * z_hat, d_pre, d_params


def test_gradient_check_catches_the_papers_printed_jacobian():
    torch.manual_seed(0)
    core = rm.RTRLCore(PrintedEquationELSTMCell(3, 6)).double()
    with torch.no_grad():
        core.cell.weight_hh.mul_(4)  # make the recurrent weights matter
    with pytest.raises(AssertionError, match="differs from BPTT"):
        rm.check_rtrl_gradients(core, modes=("rtrl",))


def test_segment_and_stepwise_carry_equal_state_and_sensitivities():
    torch.manual_seed(4)
    core = rm.ELSTM(5, 7).double()
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    is_init = torch.zeros(3, 9, dtype=torch.bool)
    is_init[1, 4] = True
    states = {}
    for mode in ("rtrl", "rtrl_stepwise"):
        state = core.initial_state(3)
        for sl in (slice(0, 4), slice(4, 9)):
            _, state = core(x[:, sl], state, is_init=is_init[:, sl], gradient=mode)
        states[mode] = state
    for key in states["rtrl"].keys(include_nested=True, leaves_only=True):
        torch.testing.assert_close(states["rtrl"][key], states["rtrl_stepwise"][key], rtol=1e-12, atol=1e-12)


def test_user_defined_cell_gets_rtrl_through_the_interface():
    """A cell written only with `step` (generic autograd local derivatives) passes the check."""

    class LeakyTanhCell(rm.ElementwiseCell):
        num_gates = 2
        recurrent_parameter_names = ("leak", "gain")

        def __init__(self, input_size, hidden_size):
            super().__init__(input_size, hidden_size)
            self.leak = torch.nn.Parameter(torch.rand(hidden_size))
            self.gain = torch.nn.Parameter(torch.randn(2, hidden_size))
            torch.nn.init.normal_(self.weight_ih, std=0.5)

        def step(self, pre, c_prev, leak, gain):
            a = torch.sigmoid(leak)
            return a * c_prev + (1 - a) * torch.tanh(
                pre[..., 0, :] + gain[..., 0, :] * c_prev * pre[..., 1, :]
            )

    torch.manual_seed(5)
    report = rm.check_rtrl_gradients(rm.RTRLCore(LeakyTanhCell(4, 3)).double())
    assert max(max(e.values()) for e in report.values()) <= 1e-9


@pytest.mark.parametrize("core_cls", CORES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["rtrl", "rtrl_stepwise"])
def test_restart_from_a_stored_state_is_a_truncation_float64(core_cls, mode):
    """``restart_state``: at is_init steps the state restarts from a given (constant) state instead of
    zero. Across segments with carried sensitivities, RTRL equals BPTT that restarts there too."""
    torch.manual_seed(3)
    errors = check_restart_gradients(core_cls(3, 6).double(), mode)
    assert max(errors.values()) <= 1e-9
