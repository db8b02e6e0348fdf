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
from torch import Tensor, nn

from ..cells import ElementwiseCell, ELSTMCell, IndRNNCell, LRUCell, SRUCell
from .checks import check_gradient_mode, check_input, keep_mask
from .functional import GradientMode, elementwise_recurrence

STATE_KEY = "c"
SENSITIVITY_KEY = "sensitivity"


class RTRLCore(nn.Module):
    """Recurrent core over an :class:`~rtrl_modules.cells.ElementwiseCell`, trained by exact RTRL.

    Args:
        cell: the element-wise cell (math and parameters).
        gradient: default gradient mode: ``"rtrl"`` (exact, segment form; fast),
            ``"rtrl_stepwise"`` (exact, step-by-step recursion; allows T = 1 online updates with
            the paper's algorithm) or ``"tbptt"`` (truncated at each call).
    """

    def __init__(self, cell: ElementwiseCell, gradient: GradientMode = "rtrl") -> None:
        super().__init__()
        if not isinstance(cell, ElementwiseCell):
            raise TypeError(f"cell must be an ElementwiseCell, got {type(cell).__name__}")
        self.cell = cell
        self.gradient = check_gradient_mode(gradient)

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def sensitivity_shapes(self) -> dict[str, torch.Size]:
        """Per-example sensitivity shape of each RTRL-trained parameter."""
        return {name: p.shape for name, p in self.cell.rtrl_parameters().items()}

    def initial_state(
        self,
        batch_size: int,
        sensitivities: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TensorDict:
        """Zero state (and zero sensitivities) for ``batch_size`` sequences."""
        ref = self.cell.weight_ih
        device = ref.device if device is None else torch.device(device)
        dtype = ref.dtype if dtype is None else dtype
        state = TensorDict(
            {STATE_KEY: torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)},
            batch_size=[batch_size],
            device=device,
        )
        if sensitivities:
            state[SENSITIVITY_KEY] = TensorDict(
                {
                    name: torch.zeros(batch_size, *shape, device=device, dtype=dtype)
                    for name, shape in self.sensitivity_shapes().items()
                },
                batch_size=[batch_size],
            )
        return state

    def forward(
        self,
        x: Tensor,
        state: TensorDict | None = None,
        is_init: Tensor | None = None,
        gradient: GradientMode | None = None,
        track_sensitivities: bool | None = None,
        sensitivity_out: Tensor | None = None,
    ) -> tuple[Tensor, TensorDict]:
        """Run the core over a segment.

        Args:
            x: inputs, [B, T, D] (floating, the parameters' dtype; cast under autocast).
            state: carried state from :meth:`initial_state` or a previous call; None = zeros.
            is_init: [B, T] bool (or [B, T, 1]), True at the first step of an episode; there the
                state and sensitivities restart from zero.
            gradient: override of the core's gradient mode for this call.
            track_sensitivities: compute the sensitivities to carry on. Default: in the RTRL
                modes when autograd is on (so ``torch.no_grad()`` acting skips them).
            sensitivity_out: optional reused buffer [B, *weight_ih.shape] for the new ``weight_ih``
                sensitivity (the returned state then holds it). Writing into reused memory saves
                the page faults of a fresh B·K·N·D tensor per call; it must not share memory with
                the incoming state's sensitivities, which the backward still reads.
        Returns:
            ``out`` [B, T, output_size] and the new detached state.
        """
        gradient = check_gradient_mode(self.gradient if gradient is None else gradient)
        x = check_input(x, self.input_size, self.cell.weight_ih.dtype)
        batch = x.shape[0]
        keep = keep_mask(is_init, x)
        if track_sensitivities is None:
            track_sensitivities = torch.is_grad_enabled() and gradient != "tbptt"
        track_sensitivities = track_sensitivities and gradient != "tbptt"
        c0, sens0 = self._check_state(state, batch, x, keep, gradient, track_sensitivities)

        out_buffer = self._check_sensitivity_out(sensitivity_out, batch, x, sens0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            c_seq, sens = elementwise_recurrence(
                self.cell, x, c0, keep, sens0, gradient, track_sensitivities, out_buffer
            )
        out = self.cell.output(x, c_seq)

        new_state = TensorDict({STATE_KEY: c_seq[:, -1].detach()}, batch_size=[batch], device=x.device)
        if sens is not None:
            new_state[SENSITIVITY_KEY] = TensorDict(
                {name: s.detach() for name, s in sens.items()}, batch_size=[batch]
            )
        return out, new_state

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

    def _check_state(self, state, batch, x, keep, gradient, track):
        if state is None:
            return x.new_zeros(batch, self.hidden_size), None
        if not isinstance(state, TensorDict):
            raise TypeError(
                f"state must be a TensorDict from initial_state() or a previous call, got {type(state)}"
            )
        if STATE_KEY not in state.keys():
            raise KeyError(f"state has no {STATE_KEY!r} entry; create it with core.initial_state(batch_size)")
        c0 = state[STATE_KEY]
        if c0.shape != (batch, self.hidden_size):
            raise ValueError(
                f"state[{STATE_KEY!r}] has shape {tuple(c0.shape)} but this core needs [B, N] = "
                f"[{batch}, {self.hidden_size}]: was the state made by a core of another size or batch?"
            )
        c0 = c0.to(x.dtype).detach()
        if gradient == "tbptt" or not (track or torch.is_grad_enabled()):
            return c0, None
        sens = state.get(SENSITIVITY_KEY, None)
        if sens is None:
            if bool((keep[:, 0] == 0).all()):
                return c0, None  # every sequence starts an episode: zero sensitivities are exact
            raise KeyError(
                f"gradient={gradient!r} needs the carried sensitivities, but the state has no "
                f"{SENSITIVITY_KEY!r} entry; create it with core.initial_state(batch_size) or start "
                "every sequence with is_init=True"
            )
        out = {}
        for name, shape in self.sensitivity_shapes().items():
            if name not in sens.keys():
                raise KeyError(
                    f"state is missing the sensitivity of {name!r}; "
                    f"expected {list(self.sensitivity_shapes())}"
                )
            s = sens[name]
            if s.shape != (batch, *shape):
                raise ValueError(
                    f"sensitivity {name!r} has shape {tuple(s.shape)}, expected {(batch, *shape)}: "
                    "was the state made by a core of another size?"
                )
            out[name] = s.to(x.dtype).detach()
        return c0, out

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}"


class ELSTM(RTRLCore):
    """eLSTM core (Irie et al., 2024) trained by exact RTRL; ``out`` is h_t = σ(O[x; c]) ⊙ c_t."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_gate: bool = True,
        gradient: GradientMode = "rtrl",
        forget_bias: float | None = None,
    ) -> None:
        super().__init__(ELSTMCell(input_size, hidden_size, output_gate, forget_bias), gradient)


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
