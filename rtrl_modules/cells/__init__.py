"""Element-wise recurrent cells: the math (one step, local derivatives, read-out); no time loop."""

from .base import ElementwiseCell
from .elstm import ELSTMCell
from .indrnn import IndRNNCell
from .lru import LRUCell
from .sru import SRUCell

__all__ = ["ElementwiseCell", "ELSTMCell", "IndRNNCell", "LRUCell", "SRUCell"]
