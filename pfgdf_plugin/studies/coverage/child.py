"""The coverage child process: ``python -m pfgdf_plugin.studies.coverage.child --one NAME ...``.

Checks one case in this process and prints its row on one stdout line for the runner (`run_child`); progress
marks go to stderr. Not a user command: ``pfgdf coverage`` is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from pfgdf_plugin.studies.coverage.cases import TARGET_MACS, Case
from pfgdf_plugin.studies.coverage.checks import check_in_process
from pfgdf_plugin.studies.coverage.protocol import ROW_PREFIX


def main(argv: Sequence[str] | None = None) -> int:
    """Check the case the arguments describe and print its row; returns the exit status.

    ``PFGDF_COVERAGE_THREADS`` sets torch's thread count (default 1).
    """
    p = argparse.ArgumentParser(prog="python -m pfgdf_plugin.studies.coverage.child")
    p.add_argument("--one", required=True)
    p.add_argument("--kind", choices=("module", "model"), default="model")
    p.add_argument("--target-macs", type=float, default=TARGET_MACS)
    p.add_argument("--input-size", default=None)
    p.add_argument("--create-kwargs", default="{}")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    threads = int(os.environ.get("PFGDF_COVERAGE_THREADS", "1"))
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else None
    case = Case(args.one, kind=args.kind, input_size=size, create_kwargs=json.loads(args.create_kwargs))
    row = check_in_process(case, target_macs=args.target_macs)
    print(ROW_PREFIX + json.dumps(row.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
