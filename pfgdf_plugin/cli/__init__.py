"""The ``pfgdf`` command: one module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``.

Building the parser imports no torch, timm, ONNX or Torch-Pruning (each ``run`` imports what it needs), so
``pfgdf --help`` and ``pfgdf --version`` answer at once. Every failure of a command ends the same way: one line
``pfgdf COMMAND: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from pfgdf_plugin import __version__

# Subcommand modules in this package, in the order `pfgdf --help` lists them.
COMMANDS: tuple[str, ...] = ("demo", "run", "prune", "profile", "inspect", "export", "bench", "compare",
                              "coverage")

# Errors that describe a bad input or file in their own words (as do this package's own error classes, such as
# ParityError or GraphTimeoutError); anything else also shows its type and how to see its traceback.
_EXPECTED = (ValueError, OSError)

EPILOG = (
    "exit status: 0 done; 1 `pfgdf compare` finished but some cells failed (they are in its report); 2 any error, "
    "reported as one line `pfgdf COMMAND: error: ...` (set PFGDF_TRACEBACK=1 to also print the traceback); 130 "
    "interrupted. Shell commands assume the virtual environment is active (`source .venv/bin/activate`), or "
    "call `.venv/bin/pfgdf`."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfgdf",
        description="Prune timm / PyTorch models with PFGDF (and other criteria) on Torch-Pruning's "
        "dependency graph, and take them to the edge.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"pfgdf-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def describe(err: BaseException) -> str:
    """The text after ``error:``: the message of an expected error; type and message (and a hint) otherwise.

    Examples:
        >>> describe(ValueError("--alpha must be > 0"))
        '--alpha must be > 0'
        >>> describe(RuntimeError("boom"))
        'RuntimeError: boom (unexpected: set PFGDF_TRACEBACK=1 to see where it came from)'
    """
    text = str(err).strip()
    ours = type(err).__module__.startswith("pfgdf_plugin.")
    if (isinstance(err, _EXPECTED) or ours) and text:
        return text
    if isinstance(err, MemoryError):
        return "out of memory (MemoryError): try a smaller --input-size, batch or model"
    what = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return f"{what} (unexpected: set PFGDF_TRACEBACK=1 to see where it came from)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pfgdf`` console script; returns the exit status (see `EPILOG`)."""
    args = build_parser().parse_args(argv)
    from pfgdf_plugin._util.io import Terminated, terminate_cleanly

    try:
        # SIGTERM becomes an exception, so half-written temp files and staging directories are cleaned up.
        with terminate_cleanly():
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"pfgdf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"pfgdf {args.command}: terminated", file=sys.stderr)
        return 143
    except Exception as err:  # every failure, whatever raised it, ends as one line and status 2
        if os.environ.get("PFGDF_TRACEBACK"):
            traceback.print_exc()
        print(f"pfgdf {args.command}: error: {describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
