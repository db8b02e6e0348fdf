"""Exact real-time recurrent learning (RTRL) for element-wise recurrent networks.

Layers, each depending only on the ones before: ``cells`` (math) → ``core`` (RTRL autograd; ``limits``:
dense and multi-layer references) → ``modules`` (TorchRL) → ``objectives`` → ``envs`` → ``training``
(the plain loop) → ``recipes`` (Lightning, outside the package).
"""

from .cells import (
    BlockElementwiseCell,
    ComplexLRUCell,
    ElementwiseCell,
    ELSTMCell,
    IndRNNCell,
    LRUCell,
    RTUCell,
    SRUCell,
)
from .core import (
    ELSTM,
    GRADIENT_MODES,
    LRU,
    RTU,
    SRU,
    BlockRTRLCore,
    ComplexLRU,
    IndRNN,
    RTRLCore,
    check_rtrl_gradients,
)
from .limits import FullyRecurrentRNN, StackedELSTM, fidelity_sweep, gradient_fidelity
from .modules import (
    RECURRENT_KINDS,
    ELSTMModule,
    FeedForwardModule,
    IndRNNModule,
    LRUModule,
    PreviousReward,
    RTRLModule,
    SRUModule,
    TruncatedGradientError,
    TruncatedGradientWarning,
    make_agent,
    make_recurrent_module,
    segment_start_counts,
)
from .objectives import R2ACLoss

__all__ = [
    "ElementwiseCell",
    "ELSTMCell",
    "IndRNNCell",
    "LRUCell",
    "SRUCell",
    "RTRLCore",
    "ELSTM",
    "IndRNN",
    "LRU",
    "SRU",
    "BlockElementwiseCell",
    "RTUCell",
    "ComplexLRUCell",
    "BlockRTRLCore",
    "RTU",
    "ComplexLRU",
    "GRADIENT_MODES",
    "check_rtrl_gradients",
    "FullyRecurrentRNN",
    "StackedELSTM",
    "gradient_fidelity",
    "fidelity_sweep",
    "RTRLModule",
    "ELSTMModule",
    "IndRNNModule",
    "LRUModule",
    "SRUModule",
    "TruncatedGradientWarning",
    "TruncatedGradientError",
    "segment_start_counts",
    "FeedForwardModule",
    "RECURRENT_KINDS",
    "make_recurrent_module",
    "make_agent",
    "PreviousReward",
    "R2ACLoss",
]
__version__ = "0.1.0"
