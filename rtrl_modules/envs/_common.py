"""Small helpers shared by the environment suites (specs, input checks)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torchrl.data import Categorical, Composite

__all__ = ["check_choice", "check_options", "done_spec", "reset_mask"]


def check_choice(kind: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` listing the valid choices when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in sorted(choices, key=str))
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {listed}")


def check_options(builder: Callable[..., Any], options: dict[str, Any], suite: str) -> None:
    """Raise ``ValueError`` if ``options`` holds keywords that ``builder`` does not accept."""
    params = inspect.signature(builder).parameters
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for suite {suite!r}; valid options: {', '.join(sorted(accepted))}"
        )


def done_spec(batch_size: torch.Size) -> Composite:
    """``done``/``terminated``/``truncated`` specs, bool ``[B, 1]``."""
    shape = (*batch_size, 1)
    return Composite(
        done=Categorical(2, shape=shape, dtype=torch.bool),
        terminated=Categorical(2, shape=shape, dtype=torch.bool),
        truncated=Categorical(2, shape=shape, dtype=torch.bool),
        shape=batch_size,
    )


def reset_mask(tensordict, batch_size: torch.Size) -> torch.Tensor:
    """The ``"_reset"`` mask of a (partial) reset as a bool ``[B]`` tensor; all ``True`` if absent."""
    mask = None if tensordict is None else tensordict.get("_reset", None)
    if mask is None:
        return torch.ones(batch_size, dtype=torch.bool)
    return mask.reshape(batch_size)
