"""Input checks shared by the limits cores (plumbing)."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor


def check_mode(gradient: str, valid: tuple[str, ...]) -> str:
    if gradient not in valid:
        raise ValueError(f"unknown gradient mode {gradient!r}; valid choices are {', '.join(valid)}")
    return gradient


def check_input(x: Tensor, input_size: int, dtype: torch.dtype) -> Tensor:
    """x must be a finite floating [B, T, input_size] tensor of the parameters' dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [B, T, D], got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != input_size or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have shape [B, T, {input_size}] with B, T ≥ 1; got {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"x has dtype {x.dtype} but the parameters are {dtype}; cast one of them")
    return x


def keep_mask(is_init: Tensor | None, x: Tensor) -> Tensor:
    """[B, T] float: 0 where an episode starts (is_init), else 1."""
    batch, steps = x.shape[:2]
    if is_init is None:
        return x.new_ones(batch, steps)
    if is_init.dim() == 3 and is_init.shape[-1] == 1:
        is_init = is_init.squeeze(-1)
    if is_init.shape != (batch, steps) or is_init.dtype != torch.bool:
        raise ValueError(
            f"is_init must be a bool tensor of shape [B, T] = [{batch}, {steps}]; "
            f"got {is_init.dtype} {tuple(is_init.shape)}"
        )
    return (~is_init).to(x.dtype)


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
