"""``pfgdf demo``: the whole pipeline on a built-in default, on real data, with no downloads.

Trains timm's ``resnet10t`` (1 input channel) on scikit-learn's digits, prunes it with PFGDF's automated
search to a MACs target, recalibrates BatchNorm, fine-tunes, exports both models to ONNX (checked against
PyTorch), measures their latency on ONNX Runtime at 1 thread, and reports accuracy, parameters, MACs and
latency before and after, in a report folder (JSON, Markdown, a latency plot, the models).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import _io
from ..data import load_dataset, split
from ..models import create_model
from ..pipeline import prune, save_pruned
from ..pipeline.benchmark import benchmark_latency
from ..pipeline.export import export_onnx
from ..pipeline.recover import FinetuneConfig, evaluate, finetune, recalibrate_bn
from . import _common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small timm CNN on real digits, prune it with PFGDF, recover, export, time, report",
        description="The main job on a built-in default: train timm's resnet10t on scikit-learn's digits "
        "(real images, bundled with scikit-learn), prune it with PFGDF's automated search to --target-macs, "
        "recalibrate BatchNorm, fine-tune, export original and pruned models to ONNX (checked against "
        "PyTorch), time both on ONNX Runtime at 1 thread, and write a report folder (report.json, report.md, "
        "latency.png, the .pt and .onnx models). Everything runs on the CPU; the default takes 1 to 2 minutes "
        "on 2 cores.",
    )
    p.add_argument("--output-dir", default="demo-out", help="report folder (default: demo-out)")
    p.add_argument("--model", default="resnet10t", help="timm model to train (default: resnet10t)")
    p.add_argument("--data", default="digits", help="built-in dataset (digits, mnist) or an ImageFolder dir")
    p.add_argument("--input-size", type=_common.input_size, default=(1, 16, 16),
                   help="model input as SIZE, HxW or CxHxW (default: 1x16x16)")
    p.add_argument("--target-macs", type=_common.fraction, default=0.5, help="fraction of MACs to keep (0.5)")
    p.add_argument("--epochs", type=_common.positive_int, default=6, help="training epochs of the unpruned model (6)")
    p.add_argument("--finetune-epochs", type=_common.positive_int, default=3,
                   help="fine-tuning epochs after pruning (3)")
    p.add_argument("--seed", type=int, default=0, help="seed for data order and initialisation (0)")
    p.add_argument("--round-to", type=_common.round_to, default="auto",
                   help="keep channel counts at multiples of N, or 'auto' (default): the multiple that keeps convs "
                   "on ONNX Runtime's fast CPU path here (16 with AVX-512, else 8)")
    p.add_argument("--latency-runs", type=_common.positive_int, default=50,
                   help="timed ONNX Runtime runs per model (50)")
    p.set_defaults(run=run)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.output_dir)
    size = args.input_size
    torch.manual_seed(args.seed)
    _log(f"[1/6] data: {args.data} at {size}")
    train, val = split(load_dataset(args.data, size, seed=args.seed))
    n_classes = int(max(train.tensors[1].max(), val.tensors[1].max())) + 1
    loader = DataLoader(train, 64, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val, 256)

    _log(f"[2/6] training {args.model} from scratch ({args.epochs} epochs, {len(train)} images)")
    model = create_model(args.model, num_classes=n_classes, in_chans=size[0])
    base = finetune(model, loader, val_loader, FinetuneConfig(epochs=args.epochs, lr=0.05, seed=args.seed))
    x = torch.randn(1, *size)

    _log(f"[3/6] pruning with PFGDF to keep {args.target_macs:.0%} of MACs")
    result = prune(model, x, target_macs=args.target_macs, round_to=args.round_to, progress=True)
    pruned = result.model
    stale = evaluate(pruned, val_loader)

    _log("[4/6] recalibrating BatchNorm, fine-tuning")
    recalibrate_bn(pruned, loader, num_batches=20)
    recalibrated = evaluate(pruned, val_loader)
    tuned = finetune(pruned, loader, val_loader,
                     FinetuneConfig(epochs=args.finetune_epochs, lr=0.02, seed=args.seed), teacher=None)

    _log(f"[5/6] exporting to ONNX and measuring latency (ONNX Runtime, 1 thread, {args.latency_runs} runs)")
    onnx_original = export_onnx(model, out / "original.onnx", size)
    onnx_pruned = export_onnx(pruned, out / "pruned.onnx", size)
    bench = benchmark_latency({"pruned": onnx_pruned.path}, baseline=onnx_original.path, threads=(1,),
                              runs=args.latency_runs)
    bench.plot(out / "latency.png")
    latency = {"original": bench.measurement("original", 1), "pruned": bench.measurement("pruned", 1)}

    _log(f"[6/6] writing {out}/")
    save_pruned(pruned, out / "pruned.pt", metadata={"timm_model": args.model, "num_classes": n_classes,
                                                      "in_chans": size[0], "input_size": list(size)})
    save_pruned(model, out / "original.pt", metadata={"timm_model": args.model, "num_classes": n_classes,
                                                       "in_chans": size[0], "input_size": list(size)})
    summary = {
        "model": args.model, "data": args.data, "input_size": list(size), "train_images": len(train),
        "val_images": len(val), "alpha": result.alpha, "target_macs": args.target_macs,
        "accuracy": {"unpruned": base.best_accuracy, "pruned_before_recalibration": stale,
                     "pruned_after_recalibration": recalibrated, "pruned_after_finetuning": tuned.best_accuracy},
        "params": {"before": result.params_before, "after": result.params_after},
        "macs": {"before": result.macs_before, "after": result.macs_after},
        "latency_ms_1_thread": {k: {"median": m.median_ms, "p90": m.p90_ms} for k, m in latency.items()},
        "speedup_1_thread": latency["pruned"].speedup, "efficiency_1_thread": latency["pruned"].efficiency,
        "onnx_parity_relative_error": {"original": onnx_original.parity.relative_error,
                                       "pruned": onnx_pruned.parity.relative_error},
        "seconds": time.perf_counter() - start,
        "training_history": base.history, "finetune_history": tuned.history,
        "prune_report": result.to_dict(),
    }
    table = _table(summary)
    _io.write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    _io.write_text(out / "report.md", "# pfgdf demo\n\n" + _markdown(summary) + "\n")
    print(result.table())
    print()
    print(table)
    print(f"\nreport: {out}/report.json, {out}/report.md, {out}/latency.png; "
          f"models: {out}/original.pt, {out}/pruned.pt, {out}/original.onnx, {out}/pruned.onnx")
    return 0


def _rows(s: dict) -> list[tuple[str, str, str]]:
    acc = s["accuracy"]
    return [
        ("val accuracy (digits)", f"{acc['unpruned']:.2%}", f"{acc['pruned_after_finetuning']:.2%}"),
        ("  pruned, stale BatchNorm", "", f"{acc['pruned_before_recalibration']:.2%}"),
        ("  pruned, recalibrated", "", f"{acc['pruned_after_recalibration']:.2%}"),
        ("parameters", f"{s['params']['before']:,}", f"{s['params']['after']:,}"),
        ("MACs", f"{s['macs']['before']:,.0f}", f"{s['macs']['after']:,.0f}"),
        ("latency, 1 thread (ms)", f"{s['latency_ms_1_thread']['original']['median']:.3f}",
         f"{s['latency_ms_1_thread']['pruned']['median']:.3f}"),
    ]


def _table(s: dict) -> str:
    lines = [f"{'':28}{'before':>14}{'after':>14}"]
    lines += [f"{a:28}{b:>14}{c:>14}" for a, b, c in _rows(s)]
    lines.append(f"speed-up {s['speedup_1_thread']:.2f}x at 1 thread (ONNX Runtime; efficiency "
                 f"{s['efficiency_1_thread']:.2f} of the MACs reduction); PFGDF alpha {s['alpha']:.4f}; "
                 f"total {s['seconds']:.0f} s")
    return "\n".join(lines)


def _markdown(s: dict) -> str:
    lines = ["| | before | after |", "| --- | ---: | ---: |"]
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in _rows(s)]
    return "\n".join(lines) + (
        f"\n\nSpeed-up {s['speedup_1_thread']:.2f}x at 1 thread on ONNX Runtime (efficiency "
        f"{s['efficiency_1_thread']:.2f}); PFGDF alpha {s['alpha']:.4f}; total {s['seconds']:.0f} s.\n\n"
        "![latency against MACs](latency.png)\n"
    )
