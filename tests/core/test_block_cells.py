"""Block-diagonal cells (RTU, complex LRU): exact RTRL against BPTT (float64 ≤ 1e-9, float32 ≤ 1e-4)."""

import functools

import pytest
import torch

import rtrl_modules as rm
from rtrl_modules.cells import BlockElementwiseCell, ComplexDiagonalCell
from rtrl_modules.core.gradcheck import bptt_reference, check_restart_gradients

CORES = {
    "linear_rtu": functools.partial(rm.RTU, activation="relu"),
    "nonlinear_rtu_tanh": functools.partial(rm.RTU, nonlinear=True, activation="tanh"),
    "nonlinear_rtu_relu": functools.partial(rm.RTU, nonlinear=True, activation="relu"),
    "complex_lru": rm.ComplexLRU,
}
SPLITS = [(5, 1, 7, 3), (1, 1, 1, 1, 1, 1, 1), (2, 9, 4)]


@pytest.mark.parametrize("name", CORES)
@pytest.mark.parametrize("split", SPLITS, ids=str)
def test_all_modes_match_bptt_float64(name, split, device):
    torch.manual_seed(1)
    core = CORES[name](3, 6).double().to(device)
    report = rm.check_rtrl_gradients(core, batch_size=5, segment_lengths=split, seed=2)
    assert set(report) == {"rtrl", "rtrl_stepwise", "tbptt"}
    assert set(report["rtrl"]) >= {"cell.weight_ih", "cell.nu_log", "cell.theta_log", "<input x>"}
    for errors in report.values():
        assert max(errors.values()) <= 1e-9


@pytest.mark.parametrize("name", CORES)
def test_float32_within_1e_4(name, device):
    torch.manual_seed(3)
    report = rm.check_rtrl_gradients(CORES[name](4, 8).to(device), batch_size=3, segment_lengths=(6, 2, 5))
    assert max(max(e.values()) for e in report.values()) <= 1e-4


@pytest.mark.parametrize("name", CORES)
def test_check_has_power_untruncated_differs_from_truncated(name):
    """The untruncated gradient of the recurrent parameters differs clearly from the truncated one."""
    torch.manual_seed(0)
    core = CORES[name](3, 6).double()
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    is_init = torch.zeros(2, 12, dtype=torch.bool)

    def grads(truncate: bool) -> torch.Tensor:
        core.zero_grad()
        out_a, c_mid = bptt_reference(core, x[:, :4], is_init[:, :4])
        out_b, _ = bptt_reference(core, x[:, 4:], is_init[:, 4:], c_mid.detach() if truncate else c_mid)
        (out_a.pow(2).sum() + out_b.pow(2).sum()).backward()
        return torch.cat([core.cell.weight_ih.grad.flatten(), core.cell.theta_log.grad])

    full, truncated = grads(False), grads(True)
    assert (full - truncated).norm() / full.norm() > 1e-3


class TransposedBlockCell(ComplexDiagonalCell):
    """A plausible bug: the rotation block transposed (λ̄ instead of λ in the Jacobian)."""

    def local_derivatives(self, pre, c_prev, params):
        jacobian, d_pre, d_params = super().local_derivatives(pre, c_prev, params)
        return jacobian.transpose(-3, -2), d_pre, d_params


def test_gradient_check_catches_a_transposed_block():
    torch.manual_seed(0)
    core = rm.BlockRTRLCore(TransposedBlockCell(3, 6, r_min=0.8)).double()
    with pytest.raises(AssertionError, match="differs from BPTT"):
        rm.check_rtrl_gradients(core, modes=("rtrl",))


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
def test_closed_form_local_derivatives_equal_generic_autograd(activation):
    torch.manual_seed(2)
    cell = ComplexDiagonalCell(4, 5, recurrent_activation=activation).double()
    pre = torch.randn(3, 7, 1, 2, 5, dtype=torch.float64)
    c_prev = torch.randn(3, 7, 2, 5, dtype=torch.float64)
    params = cell.recurrent_parameters()
    closed = cell.local_derivatives(pre, c_prev, params)
    generic = BlockElementwiseCell.local_derivatives(cell, pre, c_prev, params)
    torch.testing.assert_close(closed[0], generic[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(closed[1], generic[1], rtol=1e-12, atol=1e-12)
    for name in params:
        torch.testing.assert_close(closed[2][name], generic[2][name], rtol=1e-12, atol=1e-12)


class GatedRotationCell(BlockElementwiseCell):
    """A user-defined block cell written only with `step` (generic local derivatives): K = 2 gates,
    a parameter with a leading axis, and components that mix non-linearly."""

    num_gates = 2
    recurrent_parameter_names = ("angle", "gain")

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.angle = torch.nn.Parameter(torch.randn(hidden_size))
        self.gain = torch.nn.Parameter(torch.randn(2, hidden_size))
        torch.nn.init.normal_(self.weight_ih, std=0.5)

    def step(self, pre, c_prev, angle, gain):
        cos, sin = torch.cos(angle), torch.sin(angle)
        re, im = c_prev[..., 0, :], c_prev[..., 1, :]
        rotated = torch.stack((cos * re - sin * im, sin * re + cos * im), dim=-2)
        forget = torch.sigmoid(pre[..., 1, :, :] + gain[..., 0, None, :] * c_prev.prod(-2, keepdim=True))
        return forget * rotated + (1 - forget) * torch.tanh(pre[..., 0, :, :] + gain[..., 1, None, :])


def test_user_defined_block_cell_gets_rtrl_through_the_interface():
    torch.manual_seed(5)
    report = rm.check_rtrl_gradients(rm.BlockRTRLCore(GatedRotationCell(4, 3)).double())
    assert max(max(e.values()) for e in report.values()) <= 1e-9


def test_segment_and_stepwise_carry_equal_state_and_sensitivities():
    torch.manual_seed(4)
    core = rm.RTU(5, 7, nonlinear=True, activation="tanh").double()
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


@pytest.mark.parametrize("name", ["linear_rtu", "complex_lru"])
@pytest.mark.parametrize("mode", ["rtrl", "rtrl_stepwise"])
def test_restart_from_a_stored_state_is_a_truncation_float64(name, mode):
    """``restart_state``: RTRL across segments equals BPTT that restarts from the same constants."""
    torch.manual_seed(3)
    errors = check_restart_gradients(CORES[name](3, 6).double(), mode)
    assert max(errors.values()) <= 1e-9


@pytest.mark.parametrize("name", CORES)
def test_carried_state_is_o_of_n_times_d(name):
    """The carried RTRL state is m·(K·m·N·D + Σ|θ|) numbers per example (m = 2, K = 1, θ = ν, θ_log):
    linear in N and in D, never N²."""
    for d, n in [(3, 4), (3, 8), (6, 8)]:
        state = CORES[name](d, n).initial_state(2)
        numbers = sum(v[0].numel() for v in state.values(include_nested=True, leaves_only=True))
        assert numbers == 2 * n + 2 * (2 * n * d + 2 * n)
        assert state["c"].shape == (2, 2, n)
        assert state["sensitivity", "weight_ih"].shape == (2, 2, 2 * n, d)


def test_acting_and_tbptt_carry_no_sensitivities_and_agree_with_training_outputs():
    torch.manual_seed(6)
    core = rm.ComplexLRU(3, 4).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    is_init = torch.zeros(2, 5, dtype=torch.bool)
    out, state = core(x, core.initial_state(2), is_init)
    with torch.no_grad():
        acted, acted_state = core(x, core.initial_state(2, sensitivities=False), is_init)
    _, tbptt_state = core(x, None, is_init, gradient="tbptt")
    torch.testing.assert_close(out.detach(), acted)
    assert ("sensitivity", "weight_ih") in state.keys(include_nested=True)
    assert set(acted_state.keys()) == {"c"} and set(tbptt_state.keys()) == {"c"}


def test_missing_sensitivities_and_wrong_cell_are_clear_errors():
    core = rm.RTU(3, 4)
    state = core.initial_state(2, sensitivities=False)
    with pytest.raises(KeyError, match="sensitivity"):
        core(torch.randn(2, 3, 3), state, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="BlockElementwiseCell"):
        rm.BlockRTRLCore(rm.LRUCell(3, 4))
    with pytest.raises(ValueError, match="activation"):
        rm.RTU(3, 4, activation="gelu")
