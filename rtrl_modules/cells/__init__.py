"""Element-wise recurrent cells: the math (one step, local derivatives, read-out); no time loop."""

from .base import ElementwiseCell
from .block import BlockElementwiseCell
from .complex_diagonal import ComplexDiagonalCell, ComplexLRUCell, RTUCell
from .elstm import ELSTMCell
from .indrnn import IndRNNCell
from .lru import LRUCell
from .sru import SRUCell

__all__ = [
    "ElementwiseCell",
    "ELSTMCell",
    "IndRNNCell",
    "LRUCell",
    "SRUCell",
    "BlockElementwiseCell",
    "ComplexDiagonalCell",
    "RTUCell",
    "ComplexLRUCell",
]
