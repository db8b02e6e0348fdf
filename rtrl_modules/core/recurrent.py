"""``RTRLCore``: an element-wise cell run over segments with exact RTRL, PyTorch-style.

    core = rtrl_modules.ELSTM(input_size=257, hidden_size=256)
    state = core.initial_state(batch_size=32)
    for x, is_init in segments:                      # x [B, T, D], is_init [B, T] bool
        out, state = core(x, state, is_init=is_init)   # out [B, T, N]; state detached
        loss_fn(out).backward()                        # .grad = RTRL gradient, untruncated
        optimizer.step(); optimizer.zero_grad()

The returned state is a ``TensorDict`` with batch size [B]: ``"c"`` [B, N] and, in the RTRL
modes, ``("sensitivity", name)`` [B, *param.shape] for every RTRL-trained parameter.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor

from ..cells import ElementwiseCell, ELSTMCell, IndRNNCell, LRUCell, SRUCell
from .base import SENSITIVITY_KEY, STATE_KEY, CellCore
from .functional import GradientMode, elementwise_recurrence

__all__ = ["STATE_KEY", "SENSITIVITY_KEY", "RTRLCore", "ELSTM", "IndRNN", "LRU", "SRU"]


def _storage_uses(tensor: Tensor) -> int | None:
    """How many tensors share ``tensor``'s memory (None where this torch cannot tell)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(tensor.untyped_storage()._cdata)


class SensitivityBuffers:
    """Reused memory for the new ``weight_ih`` sensitivity S_T [B, K*N, D] of calls that pass no
    ``sensitivity_out`` (the plain API: ``out, state = core(x, state)``).

    A fresh S_T per segment costs first-touch page faults on CPU comparable to the RTRL arithmetic
    itself. So the core keeps the buffers it handed out and reuses one once nothing else shares its
    memory: no state, no view and no pending backward refers to it any more (the state a caller still
    holds, and S_0 saved for a backward, are never overwritten). At most ``size`` buffers are kept.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._buffers: list[tuple[Tensor, int]] = []  # (buffer, its use count when only we hold it)

    def get(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A buffer of ``shape`` with ``like``'s dtype and device that nothing else refers to."""
        if torch.compiler.is_compiling():  # traced graphs allocate their own outputs
            return like.new_empty(shape)
        for buffer, alone in self._buffers:
            if (
                buffer.shape == shape
                and buffer.dtype == like.dtype
                and buffer.device == like.device
                and _storage_uses(buffer) == alone
            ):
                return buffer
        buffer = like.new_empty(shape)
        alone = _storage_uses(buffer)
        if alone is not None:  # without a use count nothing can be proven free: no reuse
            if len(self._buffers) == self.size:
                self._buffers.pop(0)
            self._buffers.append((buffer, alone))
        return buffer

    def clear(self) -> None:
        self._buffers.clear()

    def __getstate__(self) -> dict:  # copies and pickles of the core carry no buffers
        return {"size": self.size, "_buffers": []}


class RTRLCore(CellCore):
    """Recurrent core over an :class:`~rtrl_modules.cells.ElementwiseCell`, trained by exact RTRL.

    Args:
        cell: the element-wise cell (math and parameters).
        gradient: default gradient mode: ``"rtrl"`` (exact, segment form; fast),
            ``"rtrl_stepwise"`` (exact, step-by-step recursion; allows T = 1 online updates with
            the paper's algorithm) or ``"tbptt"`` (truncated at each call).
    """

    cell_type = ElementwiseCell

    def __init__(self, cell: ElementwiseCell, gradient: GradientMode = "rtrl") -> None:
        super().__init__(cell, gradient)
        self.buffers = SensitivityBuffers()

    def sensitivity_shapes(self, gradient: GradientMode | None = None) -> dict[str, torch.Size]:
        """Per-example sensitivity shape of each RTRL-trained parameter (the same in every mode)."""
        return {name: p.shape for name, p in self.cell.rtrl_parameters().items()}

    def forward(
        self,
        x: Tensor,
        state: TensorDict | None = None,
        is_init: Tensor | None = None,
        gradient: GradientMode | None = None,
        track_sensitivities: bool | None = None,
        sensitivity_out: Tensor | None = None,
        restart_state: Tensor | None = None,
        return_states: bool = False,
    ) -> tuple[Tensor, TensorDict] | tuple[Tensor, TensorDict, Tensor]:
        """Run the core over a segment.

        Args:
            x: inputs, [B, T, D] (floating, the parameters' dtype; cast under autocast).
            state: carried state from :meth:`initial_state` or a previous call; None = zeros.
            is_init: [B, T] bool (or [B, T, 1]), True at the first step of an episode; there the
                state and sensitivities restart from zero.
            gradient: override of the core's gradient mode for this call.
            track_sensitivities: compute the sensitivities to carry on. Default: in the RTRL
                modes when autograd is on (so ``torch.no_grad()`` acting skips them).
            sensitivity_out: optional buffer [B, *weight_ih.shape] for the new ``weight_ih``
                sensitivity (the returned state then holds it); it must not share memory with the
                incoming state's sensitivities, which the backward still reads. Without it the core
                reuses a buffer of its own that nothing refers to any more (:class:`SensitivityBuffers`).
            restart_state: optional [B, T, N] state to restart from at ``is_init`` steps instead of
                zeros (TorchRL's recurrent-mode contract: restart from the stored state). The
                restart is a constant: gradients and sensitivities are truncated there.
            return_states: also return the cell states c [B, T, N] (attached to the graph).
        Returns:
            ``out`` [B, T, output_size] and the new detached state (and c when ``return_states``).
        """
        gradient, x, keep = self._prologue(x, is_init, gradient)
        batch = x.shape[0]
        if track_sensitivities is None:
            track_sensitivities = torch.is_grad_enabled() and gradient != "tbptt"
        track_sensitivities = track_sensitivities and gradient != "tbptt"
        c0, sens0 = self._carried(state, batch, x, keep, gradient, track_sensitivities)

        out_buffer = self._check_sensitivity_out(sensitivity_out, batch, x, sens0)
        if out_buffer is None and track_sensitivities and gradient == "rtrl":
            out_buffer = self.buffers.get((batch, *self.cell.weight_ih.shape), x)
        restart_state = self._checked_restart(restart_state, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            c_seq, sens = elementwise_recurrence(
                self.cell, x, c0, keep, sens0, gradient, track_sensitivities, out_buffer, restart_state
            )
        out, new_state = self.cell.output(x, c_seq), self._new_state(c_seq, sens)
        return (out, new_state, c_seq) if return_states else (out, new_state)

    # ----------------------------------------------------------------------------- checks
    def _check_sensitivity_out(self, out: Tensor | None, batch: int, x: Tensor, sens0) -> Tensor | None:
        if out is None:
            return None
        shape = (batch, *self.cell.weight_ih.shape)
        if out.shape != shape or out.dtype != x.dtype or not out.is_contiguous():
            raise ValueError(
                f"sensitivity_out must be a contiguous {x.dtype} tensor of shape {shape}, "
                f"got {out.dtype} {tuple(out.shape)}"
            )
        if sens0 is not None and any(out.untyped_storage().data_ptr() == s.untyped_storage().data_ptr()
                                     for s in sens0.values()):  # fmt: skip
            raise ValueError(
                "sensitivity_out shares memory with the state's sensitivities (S_0 is still needed)"
            )
        return out


class ELSTM(RTRLCore):
    """eLSTM core (Irie et al., 2024) trained by exact RTRL; ``out`` is h_t = σ(O[x; c]) ⊙ c_t."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_gate: bool = True,
        gradient: GradientMode = "rtrl",
        forget_bias: float | None = None,
        init: str = "default",
    ) -> None:
        """``init``: ``"default"`` (U(±1/√N)) or ``"official"`` (N(0, 0.1²), the official code's);
        see :class:`~rtrl_modules.cells.ELSTMCell`."""
        super().__init__(ELSTMCell(input_size, hidden_size, output_gate, forget_bias, init), gradient)


class IndRNN(RTRLCore):
    """IndRNN core trained by exact RTRL; ``out`` is c_t."""

    def __init__(self, input_size: int, hidden_size: int, gradient: GradientMode = "rtrl") -> None:
        super().__init__(IndRNNCell(input_size, hidden_size), gradient)


class LRU(RTRLCore):
    """Real diagonal linear recurrent unit trained by exact RTRL; ``out`` is c_t."""

    def __init__(
        self, input_size: int, hidden_size: int, gradient: GradientMode = "rtrl", **cell_kwargs
    ) -> None:
        super().__init__(LRUCell(input_size, hidden_size, **cell_kwargs), gradient)


class SRU(RTRLCore):
    """SRU-style core (element-wise recurrent forget gate) trained by exact RTRL; ``out`` is c_t."""

    def __init__(self, input_size: int, hidden_size: int, gradient: GradientMode = "rtrl") -> None:
        super().__init__(SRUCell(input_size, hidden_size), gradient)
