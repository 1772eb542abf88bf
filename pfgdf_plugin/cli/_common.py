"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", int, float)


def input_size(text: str) -> tuple[int, int, int]:
    """``224`` -> (3, 224, 224); ``160x192`` -> (3, 160, 192); ``1x28x28`` -> (1, 28, 28)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE, HxW or CxHxW with positive integers, got {text!r}")
    return (parts[0], parts[1], parts[2])


def parsed(text: str, cast: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> T:
    """``cast(text)`` if it parses and passes ``ok``, else argparse's error saying what was ``expected``."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def fraction(text: str) -> float:
    return parsed(text, float, lambda v: 0.0 < v <= 1.0, "a fraction to keep in (0, 1]")


def positive_int(text: str) -> int:
    return parsed(text, int, lambda v: v >= 1, "an integer >= 1")


def round_to(text: str) -> int:
    """``auto`` -> the channel multiple that keeps convs on ONNX Runtime's fast CPU path here; else N >= 1."""
    if text == "auto":
        from pfgdf_plugin.measure.latency import recommended_round_to

        return recommended_round_to()
    return positive_int(text)


def positive(text: str) -> float:
    return parsed(text, float, lambda v: 0.0 < v < math.inf, "a finite number > 0")


def distinct_outputs(inputs: list[str | os.PathLike], outputs: list[str | os.PathLike | None]) -> None:
    """Refuse to write an output over one of the inputs."""
    ins = {Path(p).resolve() for p in inputs if p}
    for out in outputs:
        if out and Path(out).resolve() in ins:
            raise ValueError(f"output {str(out)!r} would overwrite an input; choose another path")
