"""Edge-latency benchmark: realized speed-up of PFGDF-pruned models vs their MACs reduction, per ``round_to``.

Models (random weights; latency does not depend on weight values):

* ``vgg16``: VGG-16-BN for 32x32 (``CifarVGG``) at the PFGDF paper's operating point, 66.62% of conv filters
  removed (alpha found by bisection, as in ``examples/vgg16_cifar_pfgdf.py``);
* ``resnet18`` and ``mobilenetv3`` (timm ``mobilenetv3_large_100``) at ``--size`` (224), pruned to keep 50% of
  MACs (``--target-macs``).

Each pruned variant (one per ``--round-to`` value) is exported to ONNX (parity-checked) and timed with its
original in one interleaved ONNX Runtime run (CPU EP, sequential, ``--threads``), warm-up then median and p90
of ``--runs`` single-sample inferences. Efficiency = realized speed-up / MACs reduction. For every variant the
script also records why efficiency may fall short: the share of conv layers whose output channels are a
multiple of 16 (the AVX-512 NCHWc block) and the share of convs ONNX Runtime actually ran in its blocked
NCHWc layout (read from the optimized graph it saves).

    python examples/benchmarks/bench_latency.py --output bench_latency.json
    python examples/benchmarks/bench_latency.py --quick          # smoke run: tiny sizes, 5 runs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the recipe, for its filter-fraction search

from vgg16_cifar_pfgdf import PAPER, filters_removed, prune_to_filter_fraction

from pfgdf_plugin import prune
from pfgdf_plugin._util.io import write_text
from pfgdf_plugin.deploy.onnx import export_onnx
from pfgdf_plugin.measure.latency import benchmark_latency
from pfgdf_plugin.measure.platform import environment
from pfgdf_plugin.models.timm import create_model
from pfgdf_plugin.models.zoo import VGG16_CFG, CifarVGG

MODELS = ("vgg16", "resnet18", "mobilenetv3")
TIMM = {"resnet18": "resnet18", "mobilenetv3": "mobilenetv3_large_100"}
NCHWC_BLOCK = 16  # MLAS's NCHWc block on AVX-512 (8 on AVX2); see docs/deployment.md


def conv_channels(model: nn.Module) -> list[int]:
    """Output channels of every non-depthwise conv layer (depthwise convs follow their producer's count)."""
    return [m.out_channels for m in model.modules()
            if isinstance(m, nn.Conv2d) and not (m.groups == m.in_channels == m.out_channels > 1)]


def nchwc_share(path: Path) -> tuple[int, int]:
    """(convs ONNX Runtime runs in NCHWc layout, all convs) in the graph it optimizes for this CPU."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    kinds = Counter((n.domain, n.op_type) for n in graph.node)
    nchwc = kinds[("com.microsoft.nchwc", "Conv")]
    return nchwc, nchwc + kinds[("", "Conv")] + kinds[("com.microsoft", "FusedConv")]


def build(name: str, size: int, quick: bool) -> tuple[nn.Module, tuple[int, int, int]]:
    if name == "vgg16":
        cfg = None if not quick else tuple(v if v == "M" else v // 4 for v in VGG16_CFG)
        return (CifarVGG() if cfg is None else CifarVGG(cfg)).eval(), (3, 32, 32)
    return create_model(TIMM[name]).eval(), (3, size, size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--round-to", nargs="+", default=["none", "8", "16"],
                   help="round_to values for the pruned variants ('none' = exact PFGDF counts)")
    p.add_argument("--target-macs", type=float, default=0.5, help="MACs kept for resnet18 / mobilenetv3")
    p.add_argument("--size", type=int, default=224, help="input size of the timm models")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--output", default=None, help="write the table's rows and every benchmark as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny inputs and models, 5 runs, 1 thread")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.warmup, args.threads = 64, 5, 1, [1]
    round_tos = [None if r.lower() == "none" else int(r) for r in args.round_to]
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

    rows, benches = [], {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model, shape = build(name, args.size, args.quick)
        x = torch.randn(1, *shape)
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            files = {"original": export_onnx(model, Path(tmp) / "original.onnx", shape).path}
            info = {}
            for r in round_tos:
                label = f"round_to={r}" if r else "exact"
                log(f"{name}: pruning ({label}) and exporting ...")
                if name == "vgg16":
                    result = prune_to_filter_fraction(model, PAPER["filters_removed"], round_to=r)
                else:
                    result = prune(model, x, target_macs=args.target_macs, round_to=r)
                path = export_onnx(result.model, Path(tmp) / f"{label}.onnx", shape).path
                files[label] = path
                chans = conv_channels(result.model)
                info[label] = {
                    "round_to": r,
                    "macs_kept": result.macs_kept,
                    "params_kept": result.params_kept,
                    "filters_removed": filters_removed(result),
                    "convs_multiple_of_16": sum(c % NCHWC_BLOCK == 0 for c in chans) / len(chans),
                    "nchwc_convs": "{}/{}".format(*nchwc_share(path)),
                }
            info["original"] = {"nchwc_convs": "{}/{}".format(*nchwc_share(files["original"]))}
            log(f"{name}: timing {len(files)} variants at {args.threads} thread(s), {args.runs} runs each ...")
            bench = benchmark_latency({k: v for k, v in files.items() if k != "original"},
                                      baseline=files["original"], threads=args.threads, runs=args.runs,
                                      warmup=args.warmup, progress=True)
        benches[name] = bench.to_dict() | {"variant_info": info}
        for label, extra in info.items():
            if label == "original":
                continue
            row = {"model": name, "input": list(shape), "variant": label, **extra}
            for t in args.threads:
                m, base = bench.measurement(label, t), bench.measurement("original", t)
                row[f"t{t}"] = {
                    "original_median_ms": base.median_ms, "original_p90_ms": base.p90_ms,
                    "pruned_median_ms": m.median_ms, "pruned_p90_ms": m.p90_ms,
                    "speedup": m.speedup, "macs_reduction": m.macs_reduction, "efficiency": m.efficiency,
                }
            row["original_nchwc_convs"] = info["original"]["nchwc_convs"]
            rows.append(row)

    head = (f"{'model':12} {'variant':12} {'MACs kept':>9} {'%conv/16':>8} {'NCHWc':>7} "
            + " ".join(f"{f'orig ms@{t}':>11} {f'prun ms@{t}':>11} {f'p90@{t}':>8} {f'speedup@{t}':>10} "
                       f"{f'eff@{t}':>6}" for t in args.threads)
            + f" {'MACs red.':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = " ".join(
            f"{r[f't{t}']['original_median_ms']:>11.3f} {r[f't{t}']['pruned_median_ms']:>11.3f} "
            f"{r[f't{t}']['pruned_p90_ms']:>8.3f} {r[f't{t}']['speedup']:>9.2f}x {r[f't{t}']['efficiency']:>6.2f}"
            for t in args.threads
        )
        print(f"{r['model']:12} {r['variant']:12} {r['macs_kept']:>9.1%} {r['convs_multiple_of_16']:>8.0%} "
              f"{r['nchwc_convs']:>7} {cells} {r[f't{args.threads[0]}']['macs_reduction']:>8.2f}x")
    env = environment()
    print(f"\n{env['cpu']}, {env['cpus_available']} CPUs available, load average {env['load_average']}; "
          f"onnxruntime {env['versions']['onnxruntime']}, torch {env['versions']['torch']}; "
          f"{args.warmup} warm-up + {args.runs} interleaved runs; medians (p90 shown for the pruned model)")
    if args.output:
        write_text(args.output, json.dumps({"environment": env, "args": vars(args), "rows": rows,
                                            "benchmarks": benches}, indent=2) + "\n")
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
