"""TorchRL modules: RTRL cores as drop-in ``LSTMModule`` replacements, baselines and the paper's agent."""

from .agent import (
    Agent,
    ConcatPrevReward,
    ImpalaStem,
    MLPStem,
    PreviousReward,
    freeze_stem_parts,
    init_stem,
    load_stem,
    make_agent,
)
from .baselines import RECURRENT_KINDS, FeedForwardModule, make_recurrent_module
from .carry import CarriedSensitivities
from .official import convert_official_state_dict, load_official_checkpoint
from .recurrent import (
    ELSTMModule,
    IndRNNModule,
    LRUModule,
    RTRLModule,
    SRUModule,
    TruncatedGradientError,
    TruncatedGradientWarning,
    segment_start_counts,
)

__all__ = [
    "Agent",
    "ConcatPrevReward",
    "ImpalaStem",
    "MLPStem",
    "PreviousReward",
    "convert_official_state_dict",
    "freeze_stem_parts",
    "init_stem",
    "load_official_checkpoint",
    "load_stem",
    "make_agent",
    "RECURRENT_KINDS",
    "CarriedSensitivities",
    "ELSTMModule",
    "FeedForwardModule",
    "IndRNNModule",
    "LRUModule",
    "RTRLModule",
    "SRUModule",
    "TruncatedGradientError",
    "TruncatedGradientWarning",
    "make_recurrent_module",
    "segment_start_counts",
]
