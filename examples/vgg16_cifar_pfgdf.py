"""Recipe: VGG-16 (CIFAR-style, 32x32) pruned by PFGDF at the paper's operating point, exported, measured.

PFGDF's VGG-16 / CIFAR-10 result: 66.62% of conv filters removed, over 90% of parameters gone, inference 83.73%
faster on a phone. This recipe reproduces the *shape* of that result on this machine:

1. build VGG-16-BN for 32x32 inputs (``pfgdf_plugin.models.zoo.CifarVGG``) with random weights, and recalibrate its
   BatchNorm statistics on real images (``"mnist"``) so activations keep a realistic scale through depth
   (this matters for INT8 calibration; latency does not depend on weight values);
2. search PFGDF's single threshold ``alpha`` (bisection) until the share of conv filters removed matches the
   paper's 66.62%, then prune (one dependency graph, every layer its own ratio from its own distribution);
3. export original and pruned to ONNX (parity-checked against PyTorch), the pruned one also to ORT format and
   INT8 (QDQ, calibrated on ``"digits"`` images);
4. time original, pruned and INT8 in one interleaved ONNX Runtime run at 1 intra-op thread (one edge core)
   and 4, and print filters removed, parameter reduction and latency reduction next to the paper's numbers.

The weights are random: nothing here is an accuracy. Training and fine-tuning (the paper recovers the unpruned
accuracy) belong to the recovery stage, not to this recipe.

Run (about a minute on 2 cores; ``--quick`` for a tiny smoke run):

    python examples/vgg16_cifar_pfgdf.py --output-dir vgg16_out --output vgg16_out/recipe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from pfgdf_plugin import prune
from pfgdf_plugin._util.io import write_text
from pfgdf_plugin.data import load_dataset
from pfgdf_plugin.deploy import export_onnx, export_ort, quantize_int8
from pfgdf_plugin.measure.latency import benchmark_latency
from pfgdf_plugin.models.zoo import VGG16_CFG, CifarVGG
from pfgdf_plugin.pruning.result import PruneResult
from pfgdf_plugin.recovery import recalibrate_bn

PAPER = {"filters_removed": 0.6662, "params_reduction": 0.90, "latency_reduction": 0.8373}
SIZE = (3, 32, 32)


def recalibrate(model: nn.Module, source: str = "mnist", images: int = 256) -> nn.Module:
    """BatchNorm running statistics from ``images`` real images (an exact average), model left in eval mode."""
    data = load_dataset(source, SIZE, limit=images, seed=1).tensors[0]
    recalibrate_bn(model.eval(), [data[i : i + 64] for i in range(0, len(data), 64)])
    return model


def filters_removed(result: PruneResult) -> float:
    """Share of conv filters (output channels over all conv layers) that pruning removed."""
    convs = [layer for layer in result.layers if layer.type.startswith("Conv")]
    before = sum(layer.out_before for layer in convs)
    return 1.0 - sum(layer.out_after for layer in convs) / before


def prune_to_filter_fraction(
    model: nn.Module, fraction: float, *, round_to: int | None = None, steps: int = 30
) -> PruneResult:
    """PFGDF at the ``alpha`` whose pruned model has lost ``fraction`` of its conv filters (bisection on alpha)."""
    x = torch.randn(1, *SIZE)
    lo, hi = 0.0, 1.0
    while filters_removed(prune(model, x, alpha=hi, round_to=round_to)) < fraction:
        lo, hi = hi, hi * 2
        if hi > 64:
            raise ValueError(f"no alpha removes {fraction:.1%} of the filters")
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        result = prune(model, x, alpha=mid, round_to=round_to)
        if best is None or abs(filters_removed(result) - fraction) < abs(filters_removed(best) - fraction):
            best = result
        if filters_removed(result) < fraction:
            lo = mid
        else:
            hi = mid
        if abs(filters_removed(best) - fraction) < 5e-4:
            break
    return best  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="vgg16_pfgdf_out", help="where the ONNX / ORT files go")
    p.add_argument("--output", default=None, help="also write the summary as JSON here")
    p.add_argument("--filters", type=float, default=PAPER["filters_removed"],
                   help="share of conv filters to remove (default: the paper's 0.6662)")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts at multiples of N")
    p.add_argument("--threads", type=int, action="append", default=None, help="intra-op threads (default 1, 4)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per variant (default 50)")
    p.add_argument("--width", type=float, default=1.0, help="scale every VGG width (1.0 = VGG-16)")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 variant")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: width 0.125, 5 runs, 1 thread")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.runs, args.threads = 0.125, 5, args.threads or [1]
    threads = args.threads or [1, 4]
    out = Path(args.output_dir)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

    torch.manual_seed(args.seed)
    cfg = tuple(v if v == "M" else max(1, round(v * args.width)) for v in VGG16_CFG)
    model = recalibrate(CifarVGG(cfg))
    log(f"searching PFGDF's alpha for {args.filters:.2%} of conv filters removed ...")
    result = prune_to_filter_fraction(model, args.filters, round_to=args.round_to)
    pruned = recalibrate(result.model)
    print(result.table())

    log("exporting ...")
    onnx_original = export_onnx(model, out / "original.onnx", SIZE, metadata={"variant": "original"})
    onnx_pruned = export_onnx(pruned, out / "model.onnx", SIZE,
                              metadata={"variant": "pruned", "alpha": result.alpha})
    ort_pruned = export_ort(onnx_pruned.path, out, reference=pruned)
    int8 = None
    if not args.no_int8:
        int8 = quantize_int8(onnx_pruned.path, out / "model.int8.onnx", "digits",
                             num_batches=1 if args.quick else 5)
    log(f"timing at {threads} thread(s), {args.runs} runs each ...")
    models = [onnx_pruned.path, ort_pruned.path] + ([int8.path] if int8 else [])
    bench = benchmark_latency(models, baseline=onnx_original.path, threads=threads, runs=args.runs,
                              warmup=2 if args.quick else 10, progress=True)
    print()
    print(bench.table())

    one = bench.measurement("model", threads[0])
    base = bench.measurement("original", threads[0])
    summary = {
        "width": args.width,
        "alpha": result.alpha,
        "round_to": args.round_to,
        "filters_removed": filters_removed(result),
        "params_before": result.params_before,
        "params_after": result.params_after,
        "params_reduction": 1 - result.params_kept,
        "macs_before": result.macs_before,
        "macs_after": result.macs_after,
        "macs_reduction": 1 - result.macs_kept,
        "threads": threads[0],
        "latency_original_ms": base.median_ms,
        "latency_pruned_ms": one.median_ms,
        "latency_original_p90_ms": base.p90_ms,
        "latency_pruned_p90_ms": one.p90_ms,
        "latency_reduction": 1 - one.median_ms / base.median_ms,
        "speedup": one.speedup,
        "efficiency": one.efficiency,
        "int8_latency_ms": bench.measurement("model.int8", threads[0]).median_ms if int8 else None,
        "int8_top1_agreement_proxy": int8.top1_agreement if int8 else None,
        "int8_note": "agreement of INT8 and float top-1 on calibration images of a random-weight network: a "
        "proxy for quantization damage, not an accuracy",
        "parity": {"onnx_original": onnx_original.parity.relative_error,
                   "onnx_pruned": onnx_pruned.parity.relative_error, "ort_pruned": ort_pruned.parity.relative_error},
        "paper": PAPER,
        "benchmark": bench.to_dict(),
    }
    print()
    print(f"{'':24}{'this run':>12}{'PFGDF paper':>14}")
    print(f"{'conv filters removed':24}{summary['filters_removed']:>12.2%}{PAPER['filters_removed']:>14.2%}")
    print(f"{'parameters removed':24}{summary['params_reduction']:>12.2%}{'> 90%':>14}")
    print(f"{'MACs removed':24}{summary['macs_reduction']:>12.2%}{'':>14}")
    print(f"{f'latency cut, {threads[0]} thread':24}{summary['latency_reduction']:>12.2%}"
          f"{PAPER['latency_reduction']:>14.2%}  (paper: Huawei Mate 10; here: this CPU, ONNX Runtime)")
    if int8:
        print(f"INT8: {summary['int8_latency_ms']:.3f} ms; top-1 agreement with float {int8.top1_agreement:.1%} "
              "on calibration images (a proxy, not an accuracy: the weights are random)")
    if args.output:
        write_text(args.output, json.dumps(summary, indent=2) + "\n")
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
