"""The ``pfgdf`` command: one module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pfgdf_plugin import __version__
from pfgdf_plugin.pruning.errors import GraphTimeoutError

# Subcommand modules in this package, in the order `pfgdf --help` lists them.
COMMANDS: tuple[str, ...] = ("demo", "run", "prune", "inspect", "export", "bench", "compare", "coverage")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfgdf",
        description="Prune timm / PyTorch models with PFGDF (and other criteria) on Torch-Pruning's "
        "dependency graph, and take them to the edge.",
    )
    parser.add_argument("--version", action="version", version=f"pfgdf-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pfgdf`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"pfgdf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except GraphTimeoutError as err:
        print(f"pfgdf {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pfgdf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
