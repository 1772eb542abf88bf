"""Argument checks shared by the Python API and the CLI: each error names the argument and what is allowed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from numbers import Real

import torch
import torch.nn as nn


def positive_float(name: str, value: object) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if float(value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def fraction(name: str, value: object) -> float:
    """A finite number in (0, 1]: the share of something to keep."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a number in (0, 1] (the fraction to keep), got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the fraction to keep), got {value!r}")
    return float(value)


def optional_int(name: str, value: object, minimum: int) -> int | None:
    """``None`` or an integer >= ``minimum``."""
    if value is None:
        return None
    return integer(name, value, minimum)


def integer(name: str, value: object, minimum: int) -> int:
    """An integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def one_of(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of the ``allowed`` strings."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value  # type: ignore[return-value]


def finite_parameters(model: nn.Module) -> None:
    """Raise naming the first parameter holding NaN or Inf, or the first buffer holding NaN.

    Buffers may hold infinities on purpose (clamp bounds such as ``input_min = -inf``); NaN is never valid.
    """
    for name, t in model.named_parameters():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(
                f"parameter {name!r} contains NaN or Inf values; a criterion cannot rank channels of a "
                "broken layer. Fix or re-initialise it before pruning."
            )
    for name, t in model.named_buffers():
        if t.is_floating_point() and torch.isnan(t).any():
            raise ValueError(
                f"buffer {name!r} contains NaN values (running statistics of a diverged training?); "
                "re-initialise or recalibrate it before pruning."
            )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (so forward passes update no statistics), then restore each flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training
