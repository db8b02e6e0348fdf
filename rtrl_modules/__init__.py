"""Exact real-time recurrent learning (RTRL) for element-wise recurrent networks.

Layers, each depending only on the ones before: ``cells`` (math) → ``core`` (RTRL autograd) →
``modules`` (TorchRL) → ``objectives`` → ``envs`` → ``recipes`` (Lightning, outside the package).
"""

from .cells import ElementwiseCell, ELSTMCell, IndRNNCell, LRUCell, SRUCell
from .core import ELSTM, GRADIENT_MODES, LRU, SRU, IndRNN, RTRLCore, check_rtrl_gradients

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
    "GRADIENT_MODES",
    "check_rtrl_gradients",
]
__version__ = "0.1.0"
