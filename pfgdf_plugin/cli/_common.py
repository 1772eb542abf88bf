"""argparse types shared by subcommands: the checks of `pfgdf_plugin._util.validate`, named after the option.

Examples:
    >>> positive_int("--runs")("50")
    50
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pfgdf_plugin._util import validate


def input_size(option: str = "--input-size") -> Callable[[str], tuple[int, int, int]]:
    """``224`` -> (3, 224, 224); ``160x192`` -> (3, 160, 192); ``1x28x28`` -> (1, 28, 28)."""

    def parse(text: str) -> tuple[int, int, int]:
        try:
            return validate.input_size(option, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def fraction(option: str) -> Callable[[str], float]:
    """A fraction to keep, in (0, 1]."""
    return validate.argtype(validate.fraction, option)


def positive_int(option: str, maximum: int | None = None) -> Callable[[str], int]:
    """An integer >= 1 (and <= ``maximum``)."""
    return validate.argtype(validate.integer, option, minimum=1, maximum=maximum)


def positive(option: str) -> Callable[[str], float]:
    """A finite number > 0."""
    return validate.argtype(validate.positive_float, option)


def round_to(option: str = "--round-to") -> Callable[[str], int]:
    """``auto`` -> the channel multiple that keeps convs on ONNX Runtime's fast CPU path here; else N >= 1."""
    integer = positive_int(option)

    def parse(text: str) -> int:
        if text == "auto":
            from pfgdf_plugin.measure.platform import recommended_round_to

            return recommended_round_to()
        return integer(text)

    return parse
