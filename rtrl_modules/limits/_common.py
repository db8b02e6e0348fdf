"""Input checks of the limits cores (plumbing); the ones shared with the core live in core/checks.py."""

from __future__ import annotations

from tensordict import TensorDict
from torch import Tensor

from ..core.checks import check_gradient_mode as check_mode
from ..core.checks import check_input, keep_mask

__all__ = ["check_mode", "check_input", "keep_mask", "check_state"]


def check_state(state: TensorDict, key: str, shape: tuple[int, ...]) -> Tensor:
    """state[key] (detached) with the expected shape, or a clear error."""
    if not isinstance(state, TensorDict):
        raise TypeError(
            f"state must be a TensorDict from initial_state() or a previous call, got {type(state)}"
        )
    value = state.get(key, None)
    if value is None:
        raise KeyError(f"state has no {key!r} entry; create it with initial_state(batch_size)")
    if tuple(value.shape) != shape:
        raise ValueError(f"state[{key!r}] has shape {tuple(value.shape)}, expected {shape} (another size?)")
    return value.detach()
