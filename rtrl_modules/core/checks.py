"""Input checks shared by every core (plumbing): clear errors naming the problem and the choices."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .functional import GRADIENT_MODES

# Old spelling → current name of a gradient mode (or copy-task mode) that was renamed. An old
# spelling is an error that names the new one; it is never accepted silently.
RENAMED_MODES: dict[str, str] = {"rtrl_online": "rtrl_stepwise", "rtrl_local": "rtrl_layerwise"}


def check_choice(what: str, value: str, valid: Iterable[str]) -> str:
    """``value`` if it is one of ``valid``; else a ValueError naming the choices (and the new name)."""
    valid = tuple(valid)
    if value in valid:
        return value
    renamed = RENAMED_MODES.get(value) if isinstance(value, str) else None
    hint = f"it is now called {renamed!r}; " if renamed in valid else ""
    raise ValueError(f"unknown {what} {value!r}; {hint}valid choices are {', '.join(valid)}")


def check_gradient_mode(gradient: str, valid: Iterable[str] = GRADIENT_MODES) -> str:
    """``gradient`` if it is one of ``valid`` gradient modes, else a clear ValueError."""
    return check_choice("gradient mode", gradient, valid)


def check_input(x: Tensor, input_size: int, dtype: torch.dtype, check_finite: bool | None = None) -> Tensor:
    """x: a finite floating [B, T, input_size] tensor in the parameters' dtype (cast under autocast).

    Shape, dtype and type checks read only metadata, so they always run (also when traced). The
    finiteness check reads the data: it costs a device→host synchronisation and is a data-dependent
    branch, which ``torch.compile(fullgraph=True)`` and ``torch.export`` cannot trace. So, with
    ``check_finite=None`` (the default), it runs only where a NaN would do lasting harm and the sync
    is cheap relative to the work, the learner: autograd on and not compiling/exporting. Acting
    (``torch.no_grad()``/inference mode, one step per call) and traced graphs skip it; a NaN that
    appears while acting still reaches the loss, where the grad-enabled call rejects it.
    ``check_finite=True``/``False`` forces the check on/off (True is ignored while tracing).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [B, T, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape [B, T, D] (batch, time, {input_size} features); "
            f"got rank {x.dim()} shape {tuple(x.shape)}"
        )
    if x.shape[1] == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have at least one sequence and one time step, got {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"x has {x.shape[-1]} features but the core expects input_size={input_size}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dtype != dtype:
        if not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype} but the core's parameters are {dtype}; cast one of them")
        x = x.to(dtype)  # under autocast the recurrence and its sensitivities run in the parameters' dtype
    if check_finite is None:
        check_finite = torch.is_grad_enabled()
    if check_finite and not torch.compiler.is_compiling() and not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    return x


def keep_mask(is_init: Tensor | None, x: Tensor) -> Tensor:
    """[B, T] in x's dtype: 0 where an episode starts (``is_init`` [B, T] or [B, T, 1] bool), else 1."""
    batch, steps = x.shape[:2]
    if is_init is None:
        return x.new_ones(batch, steps)
    if is_init.dim() == 3 and is_init.shape[-1] == 1:
        is_init = is_init.squeeze(-1)
    if is_init.shape != (batch, steps):
        raise ValueError(
            f"is_init must have shape [B, T] = [{batch}, {steps}] (or [B, T, 1]); got {tuple(is_init.shape)}"
        )
    if is_init.dtype != torch.bool:
        raise TypeError(f"is_init must be a bool tensor, got {is_init.dtype}")
    return (~is_init).to(x.dtype)
