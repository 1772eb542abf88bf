"""Pruning criteria compared on one trained CNN: same MACs targets, same BN recalibration, same fine-tuning.

A thin wrapper around `pfgdf_plugin.studies.compare` (also the ``pfgdf compare`` subcommand), kept for its
flags: ``--output`` / ``--markdown`` / ``--plot`` name the files one by one instead of one output folder. What is
compared, and how, is documented in that module.

    python examples/benchmarks/bench_criteria.py --data mnist --targets 0.5 0.3 --seeds 0 1 \\
        --output bench-out/criteria.json --markdown bench-out/criteria.md --plot bench-out/criteria.png
    python examples/benchmarks/bench_criteria.py --quick          # a small smoke run on digits
"""

from __future__ import annotations

import argparse
import json
import sys

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin.studies.compare import CRITERIA, DATASETS, CompareConfig, compare, footer, plot, table


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=DATASETS, default=None, help="default: mnist (digits with --quick)")
    p.add_argument("--targets", type=check.argtype(check.fraction, "--targets", closed=False), nargs="+",
                   default=[0.7, 0.5, 0.3], help="fractions of MACs to keep")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA))
    p.add_argument("--train-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--train-lr", type=float, default=0.05)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--width", type=int, default=16, help="channels of the first block (x2, x4, x4, x8 after)")
    p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--round-to", type=int, default=None, help="keep pruned channel counts at multiples of N")
    p.add_argument("--no-latency", dest="latency", action="store_false",
                   help="skip the ONNX export and the latency measurement at 1 thread")
    p.add_argument("--latency-runs", type=int, default=50, help="timed ONNX Runtime runs per model")
    p.add_argument("--output", default="bench-out/criteria.json")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    p.add_argument("--plot", default=None, help="also write accuracy vs MACs kept as a PNG here")
    p.add_argument("--quick", action="store_true", help="tiny smoke setting: digits, width 8, 1 epoch each")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.train_epochs, args.finetune_epochs = 8, 1, 1
        args.limit = args.limit or 600
        args.data = args.data or "digits"
    args.data = args.data or "mnist"
    try:
        args.config = CompareConfig(
            data=args.data, targets=args.targets, seeds=args.seeds, criteria=args.criteria,
            train_epochs=args.train_epochs, finetune_epochs=args.finetune_epochs, train_lr=args.train_lr,
            finetune_lr=args.finetune_lr, width=args.width, limit=args.limit, latency=args.latency,
            latency_runs=args.latency_runs, round_to=args.round_to, threads=args.threads, quick=args.quick,
        )
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = compare(args.config, progress=True)
    print(table(report))
    print()
    print(footer(report))
    _io.write_text(args.output, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        _io.write_text(args.markdown, table(report, markdown=True) + "\n\n" + footer(report) + "\n")
    if args.plot:
        plot(report, args.plot)
    return 1 if any("error" in r for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
