"""``pfgdf bench``: latency of exported models on ONNX Runtime's CPU execution provider, against an anchor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pfgdf_plugin._util.threads import available_cpus
from pfgdf_plugin.cli import _common
from pfgdf_plugin.cli._names import PROTOCOL_RUNS

MAX_THREADS = 64
"""The most intra-op threads `--threads` accepts."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time exported models on ONNX Runtime (CPU), interleaved, against a baseline",
        description="Time .onnx / .ort models on ONNX Runtime's CPU execution provider with sequential "
        "execution, once per --threads value (intra-op threads; 1 = one edge core): warm-up, then --runs "
        "single-sample inferences per model, the models interleaved in rotating order so that load changes "
        "hit all of them alike. Reports median and p90, the speed-up over --baseline, the MACs reduction "
        "(stored by `pfgdf export`; the most a dense pruned model can gain) and efficiency = speed-up / MACs "
        "reduction. Table on stdout, progress on stderr.",
    )
    p.add_argument("models", nargs="+",
                   help=".onnx or .ort files; named in the table by file name without .onnx (model.ort stays)")
    p.add_argument("--baseline", default=None, help="the anchor model, e.g. original.onnx from pfgdf export")
    p.add_argument("--threads", type=int, action="append", default=None,
                   help=f"intra-op threads, at most {MAX_THREADS}; repeat for several rounds (default: 1 and 4, or the "
                   "CPUs available if fewer)")
    p.add_argument("--runs", type=int, default=PROTOCOL_RUNS,
                   help=f"timed runs per model and thread count (default and protocol minimum: {PROTOCOL_RUNS})")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model first (default: 10)")
    p.add_argument("--input-size", type=_common.input_size("--input-size"), default=None,
                   help="input as SIZE, HxW or CxHxW; only for models exported without a fixed input size")
    p.add_argument("--torch", metavar="PT", default=None,
                   help="also time a model file from pfgdf prune in PyTorch eager mode, and the unpruned "
                   "architecture rebuilt from its metadata when it names a timm model")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let --torch be a pickled file (pfgdf-plugin 0.1); unpickling runs any code it holds")
    p.add_argument("--spinning", action="store_true",
                   help="let ONNX Runtime's idle threads spin (off: spinners steal cores from the next model)")
    p.add_argument("--report", default=None, help="write the full result (with every sample) as JSON here")
    p.add_argument("--plot", default=None, help="write a latency-vs-MACs plot (PNG) here")
    p.add_argument("--markdown", default=None, help="write a Markdown summary here")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> list[int]:
    """Refuse bad arguments before any model is loaded; returns the thread counts."""
    from pfgdf_plugin._util import validate as check

    check.distinct([*args.models, args.baseline, args.torch], [args.report, args.plot, args.markdown])
    if args.plot:
        check.output_file("--plot", args.plot, ".png")
    for p in (args.report, args.markdown):
        if p and Path(p).is_dir():
            raise ValueError(f"output {p!r} is a directory; give a file path")
    # A huge count crashes ONNX Runtime's thread pool; more threads than cores is allowed (documented commands
    # time 4 threads on 2-core machines) but only measures contention, which run() says.
    cpus = available_cpus()
    threads = [check.integer("--threads", t, 1, MAX_THREADS) for t in args.threads or sorted({1, min(4, cpus)})]
    check.integer("--runs", args.runs, 1)
    check.integer("--warmup", args.warmup, 0)
    return threads


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util import io as _io
    from pfgdf_plugin.measure.latency import benchmark_latency
    from pfgdf_plugin.models.saved import load_pruned_with_metadata

    threads = _check(args)
    log = (lambda *_a, **_k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    over = [t for t in threads if t > available_cpus()]
    if over:
        log(f"note: --threads {', '.join(map(str, over))} exceeds the {available_cpus()} CPUs available here: those "
            "rounds measure contention, not what the model gets on a device with that many cores")
    if args.runs < PROTOCOL_RUNS:
        log(f"note: {args.runs} runs is below the protocol's {PROTOCOL_RUNS}; treat the numbers as a smoke run")

    torch_models, torch_baseline = {}, None
    if args.torch:
        model, meta = load_pruned_with_metadata(args.torch, trust_pickle=args.trust_pickle)
        torch_models["pruned"] = model
        original = meta.original_model()
        if original is not None:
            torch_models["original"] = original
            torch_baseline = "original"
        else:
            log(f"{args.torch!r} names no timm_model in its metadata: no PyTorch baseline")

    size = None if args.input_size is None else tuple(args.input_size)
    log(f"timing {len(args.models) + bool(args.baseline) + len(torch_models)} model(s) at "
        f"{', '.join(map(str, threads))} thread(s), {args.warmup} warm-up + {args.runs} runs each ...")
    result = benchmark_latency(
        args.models,
        baseline=args.baseline,
        threads=threads,
        runs=args.runs,
        warmup=args.warmup,
        input_size=size,
        torch_models=torch_models,
        torch_baseline=torch_baseline,
        spinning=args.spinning,
        progress=not args.quiet,
    )
    print(result.table())
    if args.report:
        result.to_json(args.report)
    if args.plot:
        result.plot(args.plot)
    if args.markdown:
        _io.write_text(args.markdown, result.to_markdown())
    written = [p for p in (args.report, args.plot, args.markdown) if p]
    if written:
        log(f"wrote {', '.join(written)}")
    return 0
