"""argparse types and options shared by subcommands: the checks of `pfgdf_plugin._util.validate`, named after the
option.

Building the parser must not import torch (``pfgdf --help`` stays well under a second), and `validate` imports it:
each type here imports its check only when argparse calls it on a value, i.e. when a command is actually run.

Examples:
    >>> positive_int("--runs")("50")
    50
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pfgdf_plugin._util.threads import DEFAULT_THREADS


def checked(check: str, *args: Any, **kwargs: Any) -> Callable[[str], Any]:
    """An argparse type running ``validate.<check>(*args, value, **kwargs)`` (see ``validate.argtype``), imported
    on first use."""

    def parse(text: str) -> Any:
        from pfgdf_plugin._util import validate

        return validate.argtype(getattr(validate, check), *args, **kwargs)(text)

    parse.__name__ = check  # argparse names the type in its own messages
    return parse


def input_size(option: str = "--input-size") -> Callable[[str], tuple[int, int, int]]:
    """``224`` -> (3, 224, 224); ``160x192`` -> (3, 160, 192); ``1x28x28`` -> (1, 28, 28)."""
    return checked("input_size", option)


def fraction(option: str, **kwargs: Any) -> Callable[[str], float]:
    """A fraction to keep, in (0, 1] (``closed=False``: in (0, 1))."""
    return checked("fraction", option, **kwargs)


def integer(option: str, minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= ``minimum`` (and <= ``maximum``)."""
    return checked("integer", option, minimum=minimum, maximum=maximum)


def positive_int(option: str, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= 1 (and <= ``maximum``)."""
    return integer(option, 1, maximum)


def positive(option: str) -> Callable[[str], float]:
    """A finite number > 0."""
    return checked("positive_float", option)


def round_to(option: str = "--round-to") -> Callable[[str], int]:
    """``auto`` -> the channel multiple that keeps convs on ONNX Runtime's fast CPU path here; else N >= 1."""
    integer_type = positive_int(option)

    def parse(text: str) -> int:
        if text == "auto":
            from pfgdf_plugin.measure.platform import recommended_round_to

            return recommended_round_to()
        return integer_type(text)

    return parse


def threads(option: str = "--threads") -> Callable[[str], int]:
    """A thread count in [1, CPUs available] (`pfgdf_plugin._util.threads.check_threads`)."""

    def parse(text: str) -> int:
        from pfgdf_plugin._util import validate
        from pfgdf_plugin._util.threads import check_threads

        return validate.argtype(check_threads, option)(text)

    parse.__name__ = "threads"
    return parse


def add_threads(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str,
                default: int | None = DEFAULT_THREADS) -> None:
    """``--threads N``: the CPU threads of torch and of ONNX Runtime's sessions (`pfgdf_plugin._util.threads`);
    ``default=None`` lets a command tell "not given" apart (it then applies `DEFAULT_THREADS` itself)."""
    parser.add_argument(
        "--threads", type=threads(), default=default, metavar="N",
        help=f"CPU threads for {what}, in torch (intra- and inter-op) and ONNX Runtime alike (default: "
        f"{DEFAULT_THREADS}, the fastest measured on a busy 2-core machine, where 2 threads ran `pfgdf demo` in "
        "323 s instead of 35 s and CHIP calibration 11x slower; a large model on cores nothing else uses may "
        "gain from more)",
    )
