"""One validation layer for the Python API, recipes and the CLI: each error names the argument and what is allowed.

Every check takes the argument's ``name`` as the user knows it (``"target_macs"``, ``"recipe: prune.alpha"``,
``"--threads"``) and raises ``ValueError("<name> must be <what is allowed>, got <value>")`` before anything is
modified. `argtype` turns any check into an ``argparse`` type, so the CLI reports the same words.

Examples:
    >>> fraction("target_macs", 0.5)
    0.5
    >>> input_size("input_size", "1x28x28")
    (1, 28, 28)
    >>> integer("round_to", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: round_to must be an integer >= 1, got 0
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

T = TypeVar("T")


def bad(name: str, expected: str, value: object) -> ValueError:
    """The one error message: ``<name> must be <expected>, got <value>``."""
    return ValueError(f"{name} must be {expected}, got {value!r}")


def suggest(value: str, known: Iterable[str], n: int = 5) -> str:
    """`` Did you mean: a, b?`` for the closest names in ``known``, or ``""`` when nothing is close.

    Examples:
        >>> suggest("resnt18", ["resnet18", "resnet34", "vgg11"])
        ' Did you mean: resnet18, resnet34?'
    """
    close = difflib.get_close_matches(value, list(known), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]``."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
        expected = f"an integer in [{minimum}, {maximum}]" if maximum is not None else f"an integer >= {minimum}"
        raise bad(name, expected, value)
    return int(value)  # type: ignore[arg-type]


def optional_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int | None:
    """``None`` or an integer in ``[minimum, maximum]``."""
    return None if value is None else integer(name, value, minimum, maximum)


def number(name: str, value: object) -> float:
    """A finite real number. Numeric strings are accepted (PyYAML reads ``1e-3`` without a dot as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise bad(name, "a finite number", value)
    return float(value)


def positive_float(name: str, value: object) -> float:
    """A finite number > 0."""
    if number(name, value) <= 0:
        raise bad(name, "a finite number > 0", value)
    return float(value)  # type: ignore[arg-type]


def fraction(name: str, value: object, *, closed: bool = True) -> float:
    """A number in (0, 1] (the share of something to keep); in (0, 1) with ``closed=False``."""
    expected = "a number in (0, 1] (the fraction to keep)" if closed else "a number in (0, 1)"
    try:
        x = number(name, value)
    except ValueError:
        raise bad(name, expected, value) from None
    if not (0.0 < x <= 1.0 if closed else 0.0 < x < 1.0):
        raise bad(name, expected, value)
    return x


def boolean(name: str, value: object) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise bad(name, "true or false", value)
    return value


def text(name: str, value: object) -> str:
    """A non-empty string (a path-like object is accepted as its string)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise bad(name, "a non-empty string", value)
    return value


def optional_text(name: str, value: object) -> str | None:
    """``None`` or a non-empty string."""
    return None if value is None else text(name, value)


def one_of(name: str, value: object, allowed: Sequence[str]) -> str:
    """One of the ``allowed`` strings, with the closest ones suggested."""
    if value not in allowed:
        hint = suggest(value, allowed, 3) if isinstance(value, str) else ""
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.{hint}".rstrip("."))
    return value  # type: ignore[return-value]


def sequence(name: str, value: object) -> tuple:
    """A non-empty list or tuple (not a string)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise bad(name, "a non-empty list", value)
    return tuple(value)


def shape(name: str, value: object) -> tuple[int, ...]:
    """One sample's shape without the batch: a non-empty sequence of positive integers such as ``(3, 224, 224)``."""
    if (
        not isinstance(value, (tuple, list, torch.Size))
        or not value
        or any(not _is_int(v) or v < 1 for v in value)
    ):
        raise bad(name, "one sample's shape without the batch, positive integers such as (3, 224, 224)", value)
    return tuple(int(v) for v in value)


_SIZE_FORMS = "SIZE, HxW or CxHxW (or [H, W], [C, H, W]) with positive integers"


def input_size(name: str, value: object, *, max_side: int = 8192, max_channels: int = 4096) -> tuple[int, int, int]:
    """An image input size as ``(channels, height, width)``: the one parser for API, recipes and CLI.

    ``224`` -> (3, 224, 224); ``"160x192"`` or ``[160, 192]`` -> (3, 160, 192); ``"1x28x28"`` or ``[1, 28, 28]``
    -> (1, 28, 28). Sides above ``max_side`` and channels above ``max_channels`` are refused (they would exhaust
    memory long before producing anything useful).
    """
    parts: object = value
    if isinstance(value, str):
        try:
            parts = [int(p) for p in value.lower().split("x")]
        except ValueError:
            parts = None
    elif _is_int(value):
        parts = [value]
    if isinstance(parts, (list, tuple, torch.Size)) and parts and all(_is_int(p) for p in parts):
        dims = [3, parts[0], parts[0]] if len(parts) == 1 else [3, *parts] if len(parts) == 2 else list(parts)
        if len(dims) == 3 and min(dims) >= 1:
            if dims[0] > max_channels or max(dims[1:]) > max_side:
                raise bad(name, f"at most {max_channels} channels and {max_side} pixels a side", value)
            return (int(dims[0]), int(dims[1]), int(dims[2]))
    raise bad(name, _SIZE_FORMS, value)


def input_file(name: str, path: object, suffixes: tuple[str, ...]) -> Path:
    """An existing file whose name ends in one of ``suffixes``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise bad(name, f"a path to a {' or '.join(suffixes)} file", path)
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{name}: no file at {str(source)!r}")
    if source.suffix.lower() not in suffixes:
        raise bad(name, f"a {' or '.join(suffixes)} file", str(source))
    return source


def output_file(name: str, path: object, suffix: str) -> Path:
    """A file path ending in ``suffix`` that is not a directory (it need not exist)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise bad(name, f"a file path ending in {suffix}", path)
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise bad(name, f"a file path ending in {suffix}", str(target))
    if target.is_dir():
        raise ValueError(f"{name} {str(target)!r} is a directory; give a file path ending in {suffix}")
    _writable_place(name, target)
    return target


def _writable_place(name: str, target: Path) -> None:
    """The nearest existing ancestor of ``target`` must be a writable directory."""
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{name} {str(target)!r} cannot be created: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(target)!r} cannot be written: no write permission in {str(ancestor)!r}")


def output_path(name: str, path: object) -> Path:
    """A file path to write: not empty, not a directory, in a place that can be written (it need not exist)."""
    target = Path(text(name, path))
    if target.is_dir():
        raise ValueError(f"{name} {str(target)!r} is a directory; give a file path")
    _writable_place(name, target)
    return target


def output_directory(name: str, path: object) -> Path:
    """A directory to write into: an existing directory, or a path that can be created (checked before work)."""
    target = Path(text(name, path))
    if target.exists() and not target.is_dir():
        raise ValueError(f"{name} {str(target)!r} exists and is not a directory")
    _writable_place(name, target)
    return target


def distinct(inputs: Iterable[str | os.PathLike | None], outputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that would overwrite an input or another output (checked before any work)."""
    ins = {Path(p).resolve() for p in inputs if p}
    seen: dict[Path, str] = {}
    for out in outputs:
        if not out:
            continue
        resolved = Path(out).resolve()
        if resolved in ins:
            raise ValueError(f"output {str(out)!r} would overwrite an input; choose another path")
        if resolved in seen:
            raise ValueError(f"two outputs are the same file {str(out)!r}; give each output its own path")
        seen[resolved] = str(out)


def argtype(check: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[str], T]:
    """An ``argparse`` type from a check: text is parsed as a number when it is one, then checked.

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--target-macs", type=argtype(fraction, "--target-macs"))
        >>> parser.parse_args(["--target-macs", "0.5"]).target_macs
        0.5
    """

    def parse(value: str) -> T:
        parsed: object = value
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                continue
        try:
            return check(*args, parsed, **kwargs)
        except (ValueError, FileNotFoundError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = getattr(check, "__name__", "value")  # argparse names the type in its own messages
    return parse


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
