"""Latency-targeted pruning: measured speed-up against the target, per model and target (issue 14's benchmark).

For each model (random weights; latency does not depend on weight values) at its default input size and each
``--targets`` speed-up, ``prune(model, x, target_speedup=t, threads=--threads)`` builds this machine's latency
table (from scratch for the first target of each model: a fresh cache per run, so its build time is measured;
cached afterwards), searches on it and corrects on measurements. Then, independently of the search, the unpruned
and pruned models are exported with the product's exporter and timed in one interleaved ONNX Runtime run (CPU
EP, sequential, ``--threads``, median of ``--runs``). Reported per row: target, measured speed-up and its ratio to
the target, the table's own predicted speed-up (before the search fitted it to measurements) and its error
against the measured speed-up, MACs kept, corrections, and seconds (table build, whole prune call). As the anchor
in the same run, each model is also pruned with ``target_macs = 1 / 2`` and ``round_to`` auto (the product's MACs
path) and timed the same way.

    python examples/benchmarks/bench_latency_target.py --output-dir bench-out/latency-target
    python examples/benchmarks/bench_latency_target.py --models resnet18 --targets 2 --runs 10   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

MODELS = ("resnet18", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto", "regnetx_004",
          "vit_tiny_patch16_224", "mobilevit_xxs")
ANCHOR_SPEEDUP = 2.0


def measure(model: torch.nn.Module, anchor: bytes, x: torch.Tensor, threads: int, runs: int) -> tuple[float, float]:
    from pfgdf_plugin.deploy.onnx import onnx_bytes
    from pfgdf_plugin.device_probe import time_interleaved

    before, after = time_interleaved([anchor, onnx_bytes(model, x)], list(x.shape), threads, runs=runs)
    return before, after


def run_model(name: str, targets: list[float], threads: int, runs: int) -> list[dict]:
    from pfgdf_plugin import prune
    from pfgdf_plugin.deploy.onnx import onnx_bytes
    from pfgdf_plugin.measure.platform import recommended_round_to
    from pfgdf_plugin.models.timm import create_model
    from pfgdf_plugin.pruning.errors import TargetOutOfReachError

    model = create_model(name).eval()
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    anchor = onnx_bytes(model, x)
    rows = []
    for t in targets:
        row: dict = {"model": name, "input_size": list(size), "target": t, "kind": "latency"}
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = prune(model, x, target_speedup=t, threads=threads)
        except TargetOutOfReachError as err:
            row.update(error=str(err), prune_seconds=time.perf_counter() - start)
            rows.append(row)
            print(f"{name} {t}x: out of reach: {err}", file=sys.stderr)
            continue
        lat = result.latency
        before, after = measure(result.model, anchor, x, threads, runs)
        row.update(
            prune_seconds=time.perf_counter() - start, table_seconds=lat.table_seconds,
            search_overhead_seconds=time.perf_counter() - start - lat.table_seconds,
            corrections=lat.corrections, macs_kept=result.macs_kept,
            predicted_speedup=lat.predicted_speedup, search_measured_speedup=lat.measured_speedup,
            measured_before_ms=before, measured_after_ms=after, measured_speedup=before / after,
            ratio=before / after / t, prediction_error=lat.predicted_speedup / (before / after) - 1,
            warnings=[str(w.message) for w in caught if "speed-up" in str(w.message)],
        )
        rows.append(row)
        print(f"{name} {t}x: measured {before / after:.2f}x ({row['ratio']:.3f} of target), predicted "
              f"{lat.predicted_speedup:.2f}x, MACs kept {result.macs_kept:.1%}, {row['prune_seconds']:.0f} s",
              file=sys.stderr)
    start = time.perf_counter()
    result = prune(model, x, target_macs=1 / ANCHOR_SPEEDUP, round_to=recommended_round_to())
    before, after = measure(result.model, anchor, x, threads, runs)
    rows.append({"model": name, "input_size": list(size), "target": ANCHOR_SPEEDUP, "kind": "macs-anchor",
                 "macs_kept": result.macs_kept, "measured_speedup": before / after, "ratio": before / after /
                 ANCHOR_SPEEDUP, "measured_before_ms": before, "measured_after_ms": after,
                 "prune_seconds": time.perf_counter() - start})
    print(f"{name} anchor target_macs=0.5: measured {before / after:.2f}x", file=sys.stderr)
    return rows


def summary(rows: list[dict]) -> dict:
    hits = [abs(r["ratio"] - 1) for r in rows if r["kind"] == "latency" and "ratio" in r]
    errors = [abs(r["prediction_error"]) for r in rows if r["kind"] == "latency" and "prediction_error" in r]
    return {
        "rows_met": len(hits), "rows_out_of_reach": sum(1 for r in rows if "error" in r),
        "median_abs_miss": statistics.median(hits) if hits else None, "worst_abs_miss": max(hits, default=None),
        "median_abs_prediction_error": statistics.median(errors) if errors else None,
        "worst_abs_prediction_error": max(errors, default=None),
    }


def markdown(rows: list[dict], summ: dict, env: dict, threads: int, runs: int) -> str:
    lines = [f"Measured on {env['cpu']} ({env['machine']}), ONNX Runtime {env['versions']['onnxruntime']}, "
             f"{threads} thread(s), median of {runs} interleaved runs.", "",
             "| model | target | measured speed-up | measured / target | predicted | prediction error | MACs kept "
             "| corrections | table s | prune s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['target']:g}x | out of reach | | | | | | | {r['prune_seconds']:.0f} |")
        elif r["kind"] == "latency":
            lines.append(
                f"| {r['model']} | {r['target']:g}x | {r['measured_speedup']:.2f}x | {r['ratio']:.3f} | "
                f"{r['predicted_speedup']:.2f}x | {r['prediction_error']:+.1%} | {r['macs_kept']:.1%} | "
                f"{r['corrections']} | {r['table_seconds']:.0f} | {r['prune_seconds']:.0f} |")
        else:
            lines.append(f"| {r['model']} | MACs 50% (anchor) | {r['measured_speedup']:.2f}x | {r['ratio']:.3f} | "
                         f"| | {r['macs_kept']:.1%} | | | {r['prune_seconds']:.0f} |")
    lines += ["", f"Median |measured/target - 1|: {summ['median_abs_miss']:.1%}; worst: {summ['worst_abs_miss']:.1%} "
              f"({summ['rows_met']} rows, {summ['rows_out_of_reach']} out of reach). Table prediction error "
              f"(predicted / measured speed-up - 1): median {summ['median_abs_prediction_error']:.1%}, worst "
              f"{summ['worst_abs_prediction_error']:.1%}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    data = [r for r in rows if r["kind"] == "latency" and "measured_speedup" in r]
    for name in dict.fromkeys(r["model"] for r in data):
        pts = [(r["target"], r["measured_speedup"]) for r in data if r["model"] == name]
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    hi = max([r["target"] for r in data] + [3.0])
    ax.plot([1, hi], [1, hi], "k--", lw=1, label="measured = target")
    ax.set_xlabel("target speed-up")
    ax.set_ylabel("measured speed-up (ONNX Runtime)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def render(path: Path) -> None:
    """Re-render the Markdown, the plot and the summary from a JSON this script wrote (no measuring)."""
    from pfgdf_plugin._util.io import write_text

    data = json.loads(path.read_text())
    for r in data["rows"]:
        if r["kind"] == "latency" and "predicted_speedup" in r:
            r["prediction_error"] = r["predicted_speedup"] / r["measured_speedup"] - 1
    data["summary"] = summary(data["rows"])
    write_text(path, json.dumps(data, indent=1))
    text = markdown(data["rows"], data["summary"], data["environment"], data["threads"], data["runs"])
    write_text(path.with_suffix(".md"), text)
    plot(data["rows"], path.with_suffix(".png"))
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--targets", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--output-dir", type=Path, default=Path("bench-out/latency-target"))
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only re-render the Markdown and plot from a JSON this script wrote")
    args = p.parse_args()
    if args.render is not None:
        render(args.render)
        return
    from pfgdf_plugin._util.io import write_text
    from pfgdf_plugin._util.threads import set_threads
    from pfgdf_plugin.measure.platform import environment

    set_threads(min(2, os.cpu_count() or 1))  # torch's own threads for graph building; ONNX Runtime's are --threads
    os.environ["PFGDF_CACHE_DIR"] = tempfile.mkdtemp(prefix="pfgdf-bench-cache-")  # tables built from scratch
    rows: list[dict] = []
    for name in args.models:
        rows += run_model(name, args.targets, args.threads, args.runs)
    env = environment()
    summ = summary(rows)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "latency_target.json", json.dumps({"environment": env, "threads": args.threads,
                                                        "runs": args.runs, "rows": rows, "summary": summ}, indent=1))
    text = markdown(rows, summ, env, args.threads, args.runs)
    write_text(out / "latency_target.md", text)
    plot(rows, out / "latency_target.png")
    print(text)


if __name__ == "__main__":
    main()
