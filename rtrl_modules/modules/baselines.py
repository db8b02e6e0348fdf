"""One switch between the RTRL core and its baselines, all behind the same keys.

    core = make_recurrent_module("rtrl", input_size=257, hidden_size=256, in_key="embed", out_key="features")

===================  ==============================================================  =====================
core                 module                                                          state key(s)
===================  ==============================================================  =====================
``"rtrl"``           :class:`ELSTMModule`, exact RTRL (segment form)                 ``recurrent_state``
``"rtrl_stepwise"``  :class:`ELSTMModule`, exact RTRL (step-by-step recursion)       ``recurrent_state``
``"tbptt"``          :class:`ELSTMModule`, gradient truncated at the segment start   ``recurrent_state``
``"lstm"``           ``torchrl.modules.LSTMModule`` (TBPTT)                          ``recurrent_state_h/c``
``"feedforward"``    :class:`FeedForwardModule`: Linear + ReLU, no recurrent state   none
===================  ==============================================================  =====================

The eLSTM choices are the core's gradient modes (:data:`rtrl_modules.GRADIENT_MODES`), passed on as
``gradient=``. Every core reads ``in_key`` [*, input_size] and writes ``out_key`` [*, output_size]
(``hidden_size``, except the layer-less feed-forward baseline: ``input_size``).
"""

from __future__ import annotations

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn

from ..cells.base import check_init
from ..core.functional import GRADIENT_MODES
from .recurrent import ELSTMModule

# The choices of recurrent core (``make_agent(core=...)``, the recipes' ``core``): the eLSTM under
# each gradient mode of the core, then the baselines.
RECURRENT_KINDS: tuple[str, ...] = (*GRADIENT_MODES, "lstm", "feedforward")


class FeedForwardModule(TensorDictModuleBase):
    """Feed-forward baseline core: ``out = ReLU(W x + b)`` [*, hidden_size]; no state, no primer.

    ``layer=False`` is the official code's feed-forward baseline: no layer, ``out = x``
    [*, input_size] (its heads sit directly on the stem output and the previous reward).
    """

    def __init__(
        self, input_size: int, hidden_size: int, *, in_key: NestedKey, out_key: NestedKey, layer: bool = True
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.output_size = hidden_size if layer else input_size
        layers = [nn.Linear(input_size, hidden_size), nn.ReLU()] if layer else [nn.Identity()]
        self.net = nn.Sequential(*layers)
        self.in_keys, self.out_keys = [in_key], [out_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.in_keys[0] not in tensordict.keys(include_nested=True):
            raise KeyError(f"FeedForwardModule: input key {self.in_keys[0]!r} not found in the tensordict")
        return tensordict.set(self.out_keys[0], self.net(tensordict.get(self.in_keys[0])))


def make_recurrent_module(
    core: str,
    input_size: int,
    hidden_size: int,
    *,
    in_key: NestedKey = "embed",
    out_key: NestedKey = "features",
    output_gate: bool = True,
    init: str = "default",
    feedforward_layer: bool = True,
    **kwargs,
) -> TensorDictModuleBase:
    """Build the recurrent core ``core`` (one of :data:`RECURRENT_KINDS`), as ``make_agent(core=...)``.

    ``init``: the eLSTM's initialisation, ``"default"`` or ``"official"`` (N(0, 0.1²); see
    :class:`~rtrl_modules.cells.ELSTMCell`); the baselines keep PyTorch's. ``feedforward_layer=False``
    gives the official feed-forward baseline (no layer; see :class:`FeedForwardModule`). Extra
    ``kwargs`` go to the module (e.g. ``slot_key`` for the eLSTM cores).
    """
    if core not in RECURRENT_KINDS:
        raise ValueError(f"unknown core {core!r}; valid choices are {', '.join(RECURRENT_KINDS)}")
    check_init(init)
    if core in GRADIENT_MODES:
        return ELSTMModule(
            input_size,
            hidden_size,
            output_gate=output_gate,
            gradient=core,
            init=init,
            in_key=in_key,
            out_key=out_key,
            **kwargs,
        )
    if core == "lstm":
        from torchrl.modules import LSTMModule

        return LSTMModule(
            input_size=input_size, hidden_size=hidden_size, in_key=in_key, out_key=out_key, **kwargs
        )
    return FeedForwardModule(
        input_size, hidden_size, in_key=in_key, out_key=out_key, layer=feedforward_layer, **kwargs
    )
