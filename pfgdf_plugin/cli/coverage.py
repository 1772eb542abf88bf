"""``pfgdf coverage``: which timm architectures prune() handles, measured model by model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pfgdf_plugin.cli import _common
from pfgdf_plugin.cli._names import COVERAGE_FAST as FAST_SUBSET
from pfgdf_plugin.cli._names import COVERAGE_MACS_KEPT_LIMIT as MACS_KEPT_LIMIT
from pfgdf_plugin.cli._names import COVERAGE_MEMORY_LIMIT_GB as DEFAULT_MEMORY_LIMIT_GB
from pfgdf_plugin.cli._names import COVERAGE_TARGET_MACS as TARGET_MACS
from pfgdf_plugin.cli._names import COVERAGE_TIMEOUT as DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from pfgdf_plugin.studies.coverage import CoverageRow

OUTPUTS: tuple[str, ...] = ("coverage.json", "coverage.md")


def add_parser(sub: argparse._SubParsersAction) -> None:
    fast = ", ".join(FAST_SUBSET)
    p = sub.add_parser(
        "coverage",
        help="sweep timm architectures: prune to half the MACs, run, export to ONNX, check every step",
        description="For each timm model module (its variant with the fewest parameters) or named model: "
        f"build it with random weights, prune(target_macs={TARGET_MACS:g}) at its default input size, then "
        "check that the pruned model runs with the same output shape, keeps at most "
        f"{MACS_KEPT_LIMIT:.0%} of the MACs (or has a documented exception), exports to ONNX with ONNX "
        "Runtime matching PyTorch within 1e-4 (relative), and that the plan is consistent. Every model runs in "
        "its own process with a time and memory limit. Writes coverage.json (every row, per-stage seconds) and "
        "coverage.md (a complete documentation page) to --output-dir, each atomically and updated after every "
        "model; prints the summary on stdout and a progress bar on stderr. Exit status 0 whatever the models "
        "do (it is a report); 2 on a bad argument. All modules take about an hour or more on 2 cores.",
    )
    p.add_argument("modules", nargs="*", metavar="MODULE",
                   help="timm model modules (timm.list_modules(), e.g. resnet vision_transformer): the smallest "
                   "variant of each")
    p.add_argument("--all", action="store_true", help="every module of timm.list_modules()")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="timm model names to check as they are (with or instead of MODULEs)")
    p.add_argument("--fast", action="store_true",
                   help=f"the fixed fast subset at reduced input sizes, about a minute: {fast}")
    p.add_argument("--jobs", type=_common.positive_int("--jobs"), default=1,
                   help="models checked at the same time, one process each (default: 1)")
    p.add_argument("--timeout", type=_common.positive("--timeout"), default=DEFAULT_TIMEOUT,
                   help=f"seconds per model before it counts as `timeout` (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--threads", type=_common.threads("--threads"), default=1,
                   help="torch / OpenMP threads per model (default: 1)")
    p.add_argument("--memory-limit", type=_common.positive("--memory-limit"),
                   default=DEFAULT_MEMORY_LIMIT_GB, metavar="GB",
                   help=f"resident memory per model before it is stopped (default: {DEFAULT_MEMORY_LIMIT_GB:g})")
    p.add_argument("--output-dir", default="coverage-out",
                   help=f"folder for {' and '.join(OUTPUTS)} (default: coverage-out)")
    p.add_argument("--previous", metavar="JSON", default=None,
                   help="an older sweep's coverage.json: the page and JSON compare groups left alone, models with "
                   "any, models passing and models out of reach (before -> after)")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin.studies.coverage import FAST_SUBSET as FAST_CASES
    from pfgdf_plugin.studies.coverage import (
        CoverageReport,
        cases_for,
        render_json,
        render_markdown,
        render_summary,
        sweep,
    )

    chosen = [n for n, given in (("MODULE", args.modules), ("--all", args.all), ("--fast", args.fast)) if given]
    if len(chosen) > 1:
        raise ValueError(f"give only one of MODULE names, --all and --fast (got {' and '.join(chosen)})")
    if (args.all or args.fast) and args.models:
        raise ValueError(f"--models cannot be combined with {chosen[0]}")
    if not chosen and not args.models:
        raise ValueError("say what to check: MODULE names, --models NAME ..., --all or --fast")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} is a file; give a folder")
    # Names are checked here, before anything runs; unknown ones come back with their closest matches.
    cases = list(FAST_CASES) if args.fast else cases_for(args.modules, args.models)
    previous = _previous(args.previous)  # read before the sweep: it may be the output folder's own file
    json_path, md_path = out / OUTPUTS[0], out / OUTPUTS[1]
    command = "pfgdf coverage " + " ".join(_argv(args))

    def save(report: CoverageReport) -> None:
        report.settings |= {"command": command, "json_name": OUTPUTS[0]}
        render_json(report, json_path, previous)
        render_markdown(report, md_path, previous)

    def partial(_row: CoverageRow, rows: list[CoverageRow]) -> None:
        # Written after every model, so that an interrupted sweep still leaves its results.
        save(CoverageReport(rows=rows, date="(partial)", seconds=0.0, environment={}, settings={}))

    report = sweep(cases=cases, jobs=args.jobs, timeout=args.timeout, threads=args.threads,
                   memory_limit_gb=args.memory_limit, progress=not args.quiet, on_row=partial)
    save(report)
    print(render_summary(report))
    if not args.quiet:
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def _previous(path: str | None) -> object:
    """The older sweep given with --previous, parsed and checked; ``None`` without one."""
    if path is None:
        return None
    import json

    from pfgdf_plugin._util import validate
    from pfgdf_plugin.studies.coverage.figures import previous_sweep

    source = validate.input_file("--previous", path, (".json",))
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--previous {str(source)!r} is not JSON: {err}") from None
    try:
        previous_sweep(data)
    except ValueError as err:
        raise ValueError(f"--previous: {err}") from None
    return data


def _argv(args: argparse.Namespace) -> list[str]:
    """The options that shaped the sweep, for the page's reproduction line."""
    words = list(args.modules)
    words += ["--all"] if args.all else []
    words += ["--fast"] if args.fast else []
    words += ["--models", *args.models] if args.models else []
    for flag, value, default in (("--jobs", args.jobs, 1), ("--timeout", args.timeout, DEFAULT_TIMEOUT),
                                 ("--threads", args.threads, 1),
                                 ("--memory-limit", args.memory_limit, DEFAULT_MEMORY_LIMIT_GB)):
        if value != default:
            words += [flag, f"{value:g}"]
    return words
