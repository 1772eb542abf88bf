"""Silence onnxruntime's offline tools (converter, quantizer): they print progress on stdout, which holds our tables."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_TOOL_LOGGERS = ("ort_format_model.utils", "onnxruntime.quantization", None)  # None: the root logger


@contextlib.contextmanager
def quiet_tools(verbose: bool) -> Iterator[None]:
    """Send the tools' stdout to stderr when `verbose`, else drop it with their INFO logs and warnings.

    Examples:
        >>> with quiet_tools(False):
        ...     print("progress nobody asked for")
    """
    loggers = [logging.getLogger(name) for name in _TOOL_LOGGERS]
    levels = [lg.level for lg in loggers]
    sink = sys.stderr if verbose else open(os.devnull, "w")
    try:
        if not verbose:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if sink is not sys.stderr:
            sink.close()
