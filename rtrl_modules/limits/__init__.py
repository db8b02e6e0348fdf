"""The limits of exact RTRL made measurable (paper §5): dense references and a practical approximation.

* :class:`FullyRecurrentRNN`: exact RTRL of a fully recurrent tanh RNN, O(N³) memory, O(N⁴) time.
* :class:`StackedELSTM`: an eLSTM stack with exact multi-layer RTRL (L(L+1)/2 blocks, the
  cross-layer ones dense), layer-wise RTRL ``"rtrl_layerwise"`` (the practical approximation) or
  ``"rtrl_uoro"`` (exact own-layer blocks, UORO estimates of the cross-layer blocks).
* :func:`gradient_fidelity` / :func:`fidelity_sweep`: the layer-wise mode's gradient vs full BPTT.
* Approximate RTRL of the dense RNN (:mod:`.approximate`): ``FullyRecurrentRNN(..., gradient=
  "snap1" | "snap2" | "uoro")``, optionally sparse (``density``); :func:`approximate_fidelity` /
  :func:`approximate_sweep` measure them against full BPTT (= exact RTRL).
"""

from .fidelity import (
    approximate_fidelity,
    approximate_sweep,
    bptt_rnn,
    bptt_stacked,
    compare,
    fidelity_sweep,
    gradient_fidelity,
    probe_loss,
)
from .fully_recurrent import APPROXIMATE_MODES, FullyRecurrentRNN
from .functional import inject_sensitivities, rnn_sensitivity_step
from .stacked import StackedELSTM

__all__ = [
    "FullyRecurrentRNN",
    "APPROXIMATE_MODES",
    "approximate_fidelity",
    "approximate_sweep",
    "StackedELSTM",
    "gradient_fidelity",
    "fidelity_sweep",
    "compare",
    "probe_loss",
    "bptt_rnn",
    "bptt_stacked",
    "inject_sensitivities",
    "rnn_sensitivity_step",
]
