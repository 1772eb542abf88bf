"""Benchmark: PFGDF's scoring overhead inside Torch-Pruning, and the cost of the automated MACs search.

Anchor: Torch-Pruning's ``MagnitudeImportance`` (L2) in a stock ``MetaPruner``, measured in the same run,
interleaved with PFGDF, on fresh copies of the same random-weight model. Prints a table and writes JSON.

    python examples/benchmarks/bench_pfgdf_overhead.py --model resnet50 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch_pruning as tp

from pfgdf_plugin import PFGDFImportance, __version__, prune
from pfgdf_plugin._util.io import write_text


def time_step(model: torch.nn.Module, x: torch.Tensor, importance) -> tuple[float, float]:
    """(seconds in pruner.step(), seconds inside the importance calls during that step)."""
    spent = [0.0]

    def timed(group):
        t = time.perf_counter()
        out = importance(group)
        spent[0] += time.perf_counter() - t
        return out

    pruner = tp.pruner.MetaPruner(model, x, importance=timed, pruning_ratio=0.5, global_pruning=True,
                                  ignored_layers=[model.get_classifier()])
    t = time.perf_counter()
    pruner.step()
    return time.perf_counter() - t, spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", default="bench-out/pfgdf_overhead.json")
    args = ap.parse_args()

    torch.manual_seed(0)
    base = timm.create_model(args.model, num_classes=1000).eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    rows: dict[str, list[float]] = {k: [] for k in ("mag_step", "mag_scoring", "pfgdf_step", "pfgdf_scoring",
                                                    "search_total", "search_steps", "search_graph")}
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}", file=sys.stderr)
        for name, imp in (("mag", tp.importance.MagnitudeImportance(p=2)), ("pfgdf", PFGDFImportance())):
            step, scoring = time_step(copy.deepcopy(base), x, imp)
            rows[f"{name}_step"].append(step)
            rows[f"{name}_scoring"].append(scoring)
        result = prune(base, x, target_macs=0.5)
        rows["search_total"].append(result.seconds)
        rows["search_steps"].append(result.search_steps)
        rows["search_graph"].append(result.extra["stage_seconds"]["graph_and_scoring"])
        stages = result.extra["stage_seconds"]

    med = {k: statistics.median(v) for k, v in rows.items()}
    overhead = (med["pfgdf_step"] - med["mag_step"]) / med["pfgdf_step"]
    report = {
        "model": args.model,
        "input_size": args.input_size,
        "repeats": args.repeats,
        "median_seconds": med,
        "raw": rows,
        "pfgdf_overhead_share_of_step": overhead,
        "scoring_ratio_pfgdf_over_magnitude": med["pfgdf_scoring"] / med["mag_scoring"],
        "search_over_one_step": med["search_total"] / med["mag_step"],
        "search_over_one_pfgdf_step": med["search_total"] / med["pfgdf_step"],
        "last_search_stage_seconds": stages,
        "macs_kept": result.macs_kept,
        "env": {
            "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "torch_pruning": tp.__version__, "pfgdf_plugin": __version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    print(f"{args.model} {args.input_size}x{args.input_size}, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':36}{'seconds':>10}")
    print(f"{'MetaPruner.step(), Magnitude (L2)':36}{med['mag_step']:>10.3f}")
    print(f"{'MetaPruner.step(), PFGDF':36}{med['pfgdf_step']:>10.3f}")
    print(f"{'  of which scoring, Magnitude':36}{med['mag_scoring']:>10.3f}")
    print(f"{'  of which scoring, PFGDF':36}{med['pfgdf_scoring']:>10.3f}")
    print(f"{'prune(target_macs=0.5), total':36}{med['search_total']:>10.3f}")
    print(f"PFGDF overhead: (PFGDF step - Magnitude step) / PFGDF step = {overhead:+.1%} (goal <= +5%); "
          f"scoring alone: PFGDF / Magnitude = {report['scoring_ratio_pfgdf_over_magnitude']:.2f}")
    print(f"search: {med['search_steps']:.0f} bisection steps, one graph build + scoring "
          f"({med['search_graph']:.2f} s); "
          f"total = {report['search_over_one_step']:.2f} x one Magnitude step, "
          f"{report['search_over_one_pfgdf_step']:.2f} x one PFGDF step (goal < 3x); MACs kept {result.macs_kept:.3f}")
    print("stages of the last search (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
