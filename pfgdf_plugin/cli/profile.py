"""``pfgdf profile``: latency tables for ``pfgdf prune --target-speedup / --target-latency-ms``.

``pfgdf profile probes`` writes a model's probe set (each conv, linear and attention operator at its real input
shape over a grid of channel counts, as tiny ONNX graphs, and the whole model) for the deployment device, where
``python -m pfgdf_plugin.device_probe`` times it into a table. ``pfgdf profile table`` builds the same table for
this machine (the one prune() measures and caches by itself) and copies it to a file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from pfgdf_plugin.cli import _common
from pfgdf_plugin.cli._names import PROFILE_LEVELS as LEVELS
from pfgdf_plugin.cli.prune import add_model_options, example_input, load_model

# The largest --levels and --quantum accepted: 64 levels already time up to 4096 probes per conv.
MAX_LEVELS = 64
MAX_QUANTUM = 128
# write_model_probes' default quantum (tests/test_cli_latency.py checks the copy).
QUANTUM = 8


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="latency tables for a latency target: probes for a device, or this machine's table",
        description="Latency tables for `pfgdf prune --target-speedup / --target-latency-ms`: per conv, linear "
        "and attention operator of one model at one input size, the ONNX Runtime CPU latency on a grid of "
        "channel counts, and the whole model's. `pfgdf profile probes` writes the probe graphs for the "
        "deployment device; `pfgdf profile table` measures this machine's table.",
    )
    what = p.add_subparsers(dest="profile_command", metavar="WHAT", required=True)
    probes = what.add_parser(
        "probes",
        help="write a model's probe set (.zip) to time on the deployment device",
        description="Write the probe set of a timm model (random weights unless --checkpoint is given) at one "
        "input size: every conv, linear and attention operator as tiny ONNX graphs over a grid of channel "
        "counts, and the whole model, in a zip with a SHA-256 manifest. Nothing is timed here. On the device "
        "(Python with onnxruntime and numpy; torch is not needed) run "
        "`python -m pfgdf_plugin.device_probe probes.zip --threads 1 --output table.json`, then prune here with "
        "`pfgdf prune ... --latency-table table.json` and the same model options and input size.",
    )
    add_model_options(probes.add_argument_group("model"))
    out = probes.add_argument_group("probes")
    out.add_argument("--output", required=True, metavar="PROBES.zip",
                     help="the probe set to write (.zip, written atomically)")
    out.add_argument("--quantum", type=_common.positive_int("--quantum", MAX_QUANTUM), default=QUANTUM,
                     help=f"grid channel counts are multiples of this (default: {QUANTUM}, which serves both 8- and "
                     "16-channel blocks)")
    _levels(out)
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    probes.set_defaults(run=run_probes)

    table = what.add_parser(
        "table",
        help="measure this machine's latency table for a model and save it (.json)",
        description="Measure this machine's ONNX Runtime latency table for a timm model at one input size (the "
        "operators not yet in the cache, and the whole model), keep it in the cache that `pfgdf prune` uses "
        "($PFGDF_CACHE_DIR, else ~/.cache/pfgdf_plugin, under latency/; one file per CPU, ONNX Runtime version "
        "and thread count) and copy it to --output. The copy describes this machine: as --latency-table on another CPU "
        "or ONNX Runtime version it is refused unless --insist-table.",
    )
    add_model_options(table.add_argument_group("model"))
    out = table.add_argument_group("table")
    out.add_argument("--output", required=True, metavar="TABLE.json",
                     help="where to copy the table (.json, written atomically)")
    _levels(out, " (operators already in the cache keep their grid)")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _common.add_threads(out, "the model and the ONNX Runtime sessions the table is measured with (the table holds "
                        "latencies at this count: prune with the same --threads)")
    table.set_defaults(run=run_table)


def _levels(g: argparse._ArgumentGroup, note: str = "") -> None:
    g.add_argument("--levels", type=_common.integer("--levels", 2, MAX_LEVELS), default=LEVELS,
                   help=f"grid points per channel axis, at most: every multiple of the grid step for small "
                   f"layers, evenly spread above (default: {LEVELS}; 2 to {MAX_LEVELS}){note}")


def _log(args: argparse.Namespace) -> Any:
    return (lambda *_a, **_k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _model_flags(args: argparse.Namespace, size: tuple[int, int, int]) -> list[str]:
    """The model options of a ``pfgdf prune`` command that builds the model these tables describe."""
    flags = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--model", args.model]
    if args.trust_pickle:
        flags.append("--trust-pickle")
    if args.num_classes is not None:
        flags += ["--num-classes", str(args.num_classes)]
    if args.in_chans is not None:
        flags += ["--in-chans", str(args.in_chans)]
    return [*flags, "--input-size", "x".join(map(str, size))]


def next_commands(args: argparse.Namespace, size: tuple[int, int, int], probes: str) -> str:
    """What to run after ``pfgdf profile probes``: the device probe, then ``pfgdf prune`` with the same model.

    Examples:
        >>> from types import SimpleNamespace
        >>> args = SimpleNamespace(checkpoint=None, model="resnet10t", trust_pickle=False, num_classes=10,
        ...                        in_chans=None)
        >>> print(next_commands(args, (3, 32, 32), "out dir/p.zip"))  # doctest: +NORMALIZE_WHITESPACE
        next, on the device (Python with onnxruntime and numpy; copy the probe set and this package's source):
          python -m pfgdf_plugin.device_probe 'out dir/p.zip' --threads 1 --output table.json
        then here, with the same model options and input size:
          pfgdf prune --model resnet10t --num-classes 10 --input-size 3x32x32 --target-speedup 2
            --latency-table table.json --threads 1 --output pruned.pt
    """
    probe = ["python", "-m", "pfgdf_plugin.device_probe", probes, "--threads", "1", "--output", "table.json"]
    prune = ["pfgdf", "prune", *_model_flags(args, size), "--target-speedup", "2", "--latency-table", "table.json",
             "--threads", "1", "--output", "pruned.pt"]
    return "\n".join([
        "next, on the device (Python with onnxruntime and numpy; copy the probe set and this package's source):",
        f"  {shlex.join(probe)}",
        "then here, with the same model options and input size:",
        f"  {shlex.join(prune)}",
    ])


def _check(args: argparse.Namespace, suffix: str) -> None:
    from pfgdf_plugin._util import validate

    validate.output_file("--output", args.output, suffix)
    validate.distinct([args.checkpoint], [args.output])


def run_probes(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util.threads import DEFAULT_THREADS, set_threads
    from pfgdf_plugin.measure.probe_set import read_probe_set
    from pfgdf_plugin.measure.profiling import write_model_probes

    _check(args, ".zip")
    set_threads(DEFAULT_THREADS)
    log = _log(args)
    model, size = load_model(args, log)
    log(f"writing the probes of {args.model or args.checkpoint} at input {size} ...")
    path = write_model_probes(model, example_input(size, args.seed), args.output, quantum=args.quantum,
                              levels=args.levels)
    probes = read_probe_set(path)  # read back: the counts printed are what the device will run
    graphs = sum(len(op["points"]) for op in probes.operators)
    print(f"wrote {path}: {len(probes.operators)} operators ({graphs} probe graphs) and the whole model, input "
          f"{list(probes.model['input_shape']) if probes.model else list(size)}")
    print(next_commands(args, size, str(path)))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util.threads import set_threads
    from pfgdf_plugin.measure.operators import model_id, operator_sites
    from pfgdf_plugin.measure.profiling import local_table

    _check(args, ".json")
    set_threads(args.threads)
    log = _log(args)
    model, size = load_model(args, log)
    x = example_input(size, args.seed)
    sites = operator_sites(model, x)
    if not sites:
        raise ValueError(f"{args.model or args.checkpoint} has no conv, linear or attention operator a latency "
                         "table can describe")
    log(f"measuring the latency table of {args.model or args.checkpoint} at input {size}, {args.threads} "
        "thread(s) (operators already cached are not measured again) ...")
    table, cached = local_table(model, x, sites, model_id(model, sites), args.threads, levels=args.levels,
                                progress=not args.quiet)
    path = table.save(args.output)
    print(f"wrote {path}: {len(table.operators)} operators and {len(table.models)} whole model(s) measured on "
          f"{table.key.describe()}")
    print(f"cached in {cached}")
    print(f"prune with it: pfgdf prune {shlex.join(_model_flags(args, size))} --target-speedup 2 "
          f"--threads {args.threads} --output pruned.pt (this machine's cached table is used without "
          "--latency-table)")
    return 0
