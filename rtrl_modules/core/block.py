"""``BlockRTRLCore``: a block-diagonal element-wise cell run over segments with exact RTRL.

    core = rtrl_modules.RTU(input_size=8, hidden_size=16)     # or ComplexLRU(8, 16)
    state = core.initial_state(batch_size=4)                   # "c" [B, 2, N], sensitivities
    out, state = core(x, state, is_init=is_init)               # x [B, T, D] → out [B, T, 2N]

The same contract as :class:`~rtrl_modules.core.RTRLCore` (``RecurrentCoreBase``): gradient modes
``"rtrl"``, ``"rtrl_stepwise"``, ``"tbptt"``; ``is_init`` resets; the returned state is a detached
``TensorDict`` with ``"c"`` [B, m, N] and ``("sensitivity", name)`` [B, m, *param.shape].
The math is in :mod:`rtrl_modules.core.block_functional` and :mod:`rtrl_modules.cells.block`.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from tensordict.utils import NestedKey
from torch import Tensor

from ..cells.block import BlockElementwiseCell
from ..cells.complex_diagonal import ComplexLRUCell, RTUCell
from .base import STATE_KEY, CellCore
from .block_functional import block_recurrence
from .functional import GradientMode

__all__ = ["BlockRTRLCore", "RTU", "ComplexLRU"]


class BlockRTRLCore(CellCore):
    """Recurrent core over a :class:`~rtrl_modules.cells.BlockElementwiseCell`, trained by exact RTRL.

    Args:
        cell: the block cell (math and parameters).
        gradient: default gradient mode, ``"rtrl"`` (segment form), ``"rtrl_stepwise"`` or ``"tbptt"``.
    """

    cell_type = BlockElementwiseCell

    def state_shapes(self) -> dict[NestedKey, torch.Size]:
        """``"c"``: [m, N] per example."""
        return {STATE_KEY: self.cell.state_shape}

    def sensitivity_shapes(self, gradient: GradientMode | None = None) -> dict[str, torch.Size]:
        """[m, *param.shape] per example, for ``weight_ih`` and each recurrent parameter (every mode)."""
        m = self.cell.block_size
        return {name: torch.Size((m, *p.shape)) for name, p in self.cell.rtrl_parameters().items()}

    def forward(
        self,
        x: Tensor,
        state: TensorDict | None = None,
        is_init: Tensor | None = None,
        gradient: GradientMode | None = None,
        track_sensitivities: bool | None = None,
        restart_state: Tensor | None = None,
        return_states: bool = False,
    ) -> tuple[Tensor, TensorDict] | tuple[Tensor, TensorDict, Tensor]:
        """Run the core over a segment.

        Args:
            x: inputs, [B, T, D]. state: from :meth:`initial_state` or a previous call; None = zeros.
            is_init: [B, T] bool, True at the first step of an episode (state and sensitivities reset).
            gradient: override of the core's gradient mode for this call.
            track_sensitivities: compute the sensitivities to carry on (default: in the RTRL modes
                when autograd is on).
            restart_state: optional [B, T, m, N] constant states to restart from at ``is_init`` steps
                (gradients and sensitivities are truncated there).
            return_states: also return the states c [B, T, m, N] (attached to the graph).
        Returns:
            ``out`` [B, T, output_size] and the new detached state (and c when ``return_states``).
        """
        gradient, x, keep = self._prologue(x, is_init, gradient)
        batch = x.shape[0]
        if track_sensitivities is None:
            track_sensitivities = torch.is_grad_enabled()
        track_sensitivities = track_sensitivities and gradient != "tbptt"
        c0, sens0 = self._carried(state, batch, x, keep, gradient, track_sensitivities)
        restart_state = self._checked_restart(restart_state, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            c_seq, sens = block_recurrence(
                self.cell, x, c0, keep, sens0, gradient, track_sensitivities, restart_state
            )
        out, new_state = self.cell.output(x, c_seq), self._new_state(c_seq, sens)
        return (out, new_state, c_seq) if return_states else (out, new_state)


class RTU(BlockRTRLCore):
    """Recurrent Trace Unit (Elelimy et al., 2024) trained by exact RTRL; ``out`` [B, T, 2N].

    ``nonlinear=False``: linear RTU, h = f([c_re; c_im]); ``True``: non-linear RTU, f inside the
    recurrence. See :class:`~rtrl_modules.cells.RTUCell`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinear: bool = False,
        activation: str = "relu",
        gradient: GradientMode = "rtrl",
        r_min: float = 0.5,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
    ) -> None:
        cell = RTUCell(input_size, hidden_size, nonlinear, activation, r_min, r_max, max_phase)
        super().__init__(cell, gradient)


class ComplexLRU(BlockRTRLCore):
    """Complex diagonal LRU (Orvieto et al., 2023) trained by exact RTRL; ``out`` = Re(C c) + D ⊙ x,
    [B, T, D]. See :class:`~rtrl_modules.cells.ComplexLRUCell`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        gradient: GradientMode = "rtrl",
        r_min: float = 0.5,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__(ComplexLRUCell(input_size, hidden_size, r_min, r_max, max_phase), gradient)
