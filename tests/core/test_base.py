"""RecurrentCoreBase: one prologue (mode, input, state, sensitivities) and one state contract."""

import pytest
import torch
from tensordict import TensorDict

import rtrl_modules as rm
from rtrl_modules.core import RecurrentCoreBase
from rtrl_modules.core.checks import check_choice
from rtrl_modules.limits import FullyRecurrentRNN, StackedELSTM

CORES = {
    "elstm": lambda: rm.ELSTM(3, 4),
    "fully_recurrent": lambda: FullyRecurrentRNN(3, 4),
    "stacked": lambda: StackedELSTM(3, [5, 4]),
}


@pytest.fixture(params=sorted(CORES))
def core(request):
    torch.manual_seed(0)
    return CORES[request.param]()


def test_every_core_shares_the_base(core):
    assert isinstance(core, RecurrentCoreBase)
    assert core.gradient in core.gradient_modes and "rtrl" in core.gradient_modes


def test_initial_state_matches_the_declared_shapes(core):
    state = core.initial_state(2, dtype=torch.float64)
    assert state.batch_size == (2,)
    for key, shape in {**core.state_shapes(), **core.sensitivity_keys()}.items():
        assert state[key].shape == (2, *shape) and state[key].dtype == torch.float64
        assert not state[key].any()
    bare = core.initial_state(2, sensitivities=False)
    assert set(bare.keys(include_nested=True, leaves_only=True)) == set(core.state_shapes())


def test_no_state_is_the_zero_state(core):
    """state=None = zero state and zero sensitivities, whatever is_init says."""
    x = torch.randn(2, 3, 3)
    out_none, new_none = core(x, None)
    out_zero, new_zero = core(x, core.initial_state(2))
    torch.testing.assert_close(out_none, out_zero)
    for key in new_zero.keys(include_nested=True, leaves_only=True):
        torch.testing.assert_close(new_none[key], new_zero[key])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda c: c(torch.randn(2, 3, 3), {"c": torch.zeros(2, 4)}), TypeError, "TensorDict"),
        (lambda c: c(torch.randn(2, 3, 3), TensorDict({}, [2])), KeyError, "initial_state"),
        (lambda c: c(torch.randn(2, 3, 3), c.initial_state(3)), ValueError, "another size or batch"),
        (lambda c: c(torch.randn(2, 3, 5)), ValueError, "input_size=3"),
        (lambda c: c(torch.randn(2, 3, 3), gradient="bptt"), ValueError, "unknown gradient mode 'bptt'"),
        (lambda c: c(torch.randn(2, 3, 3), c.initial_state(2, False)), KeyError, "is_init=True"),
        (lambda c: c(torch.randn(2, 3, 3), is_init=torch.zeros(2, 3)), TypeError, "bool"),
    ],
)
def test_the_prologue_errors_are_the_same_for_every_core(core, call, error, message):
    with pytest.raises(error, match=message):
        call(core)


def test_missing_sensitivities_are_exact_when_every_sequence_starts(core):
    x, is_init = torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.bool)
    is_init[:, 0] = True
    out, _ = core(x, core.initial_state(2, sensitivities=False), is_init=is_init)
    ref, _ = core(x, core.initial_state(2), is_init=is_init)
    torch.testing.assert_close(out, ref)


def test_sensitivity_of_the_wrong_shape_is_an_error():
    core = rm.ELSTM(3, 4)
    state = core.initial_state(2)
    state["sensitivity", "weight_ih"] = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="sensitivity 'weight_ih' has shape"):
        core(torch.randn(2, 3, 3), state)


def test_renamed_modes_name_their_new_name_only_where_it_is_valid():
    renamed = "it is now called '{}'; valid choices are rtrl, {}, tbptt$"
    with pytest.raises(ValueError, match=renamed.format("rtrl_layerwise", "rtrl_layerwise, rtrl_uoro")):
        StackedELSTM(3, [4], gradient="rtrl_local")
    with pytest.raises(ValueError, match=renamed.format("rtrl_stepwise", "rtrl_stepwise")):
        rm.ELSTM(3, 4, gradient="rtrl_online")
    with pytest.raises(ValueError) as info:
        rm.ELSTM(3, 4, gradient="rtrl_local")  # rtrl_layerwise is no mode of a one-layer core
    assert "now called" not in str(info.value) and "rtrl, rtrl_stepwise, tbptt" in str(info.value)
    with pytest.raises(ValueError, match="^unknown thing 'x'; valid choices are a, b$"):
        check_choice("thing", "x", ("a", "b"))
