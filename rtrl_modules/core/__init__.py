"""RTRL autograd core: element-wise cells run over segments with exact, untruncated gradients."""

from .base import RecurrentCoreBase
from .block import RTU, BlockRTRLCore, ComplexLRU
from .block_functional import block_recurrence
from .functional import GRADIENT_MODES, elementwise_recurrence
from .gradcheck import bptt_reference, check_rtrl_gradients
from .recurrent import ELSTM, LRU, SRU, IndRNN, RTRLCore

__all__ = [
    "GRADIENT_MODES",
    "elementwise_recurrence",
    "bptt_reference",
    "check_rtrl_gradients",
    "RecurrentCoreBase",
    "RTRLCore",
    "ELSTM",
    "IndRNN",
    "LRU",
    "SRU",
    "block_recurrence",
    "BlockRTRLCore",
    "RTU",
    "ComplexLRU",
]
