"""``pfgdf demo``: the whole pipeline on a built-in default, on real data, with no downloads.

Trains timm's ``resnet10t`` (1 input channel) on scikit-learn's digits, prunes it with PFGDF's automated
search to a MACs target, recalibrates BatchNorm, fine-tunes, and reports accuracy, parameters and MACs
before and after, plus the saved model and a report folder (JSON and Markdown).
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
from ..pipeline.recover import FinetuneConfig, evaluate, finetune, recalibrate_bn
from . import _common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small timm CNN on real digits, prune it with PFGDF, recover, report",
        description="The main job on a built-in default: train timm's resnet10t on scikit-learn's digits "
        "(real images, bundled with scikit-learn), prune it with PFGDF's automated search to --target-macs, "
        "recalibrate BatchNorm, fine-tune, and write a report folder (report.json, report.md, the pruned "
        "model). Everything runs on the CPU; the default takes a few minutes on 2 cores.",
    )
    p.add_argument("--output-dir", default="demo-out", help="report folder (default: demo-out)")
    p.add_argument("--model", default="resnet10t", help="timm model to train (default: resnet10t)")
    p.add_argument("--data", default="digits", help="built-in dataset (digits, mnist) or an ImageFolder dir")
    p.add_argument("--input-size", type=_common.input_size, default=(1, 16, 16),
                   help="model input as SIZE, HxW or CxHxW (default: 1x16x16)")
    p.add_argument("--target-macs", type=_common.fraction, default=0.5, help="fraction of MACs to keep (0.5)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs of the unpruned model (6)")
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs after pruning (3)")
    p.add_argument("--seed", type=int, default=0, help="seed for data order and initialisation (0)")
    p.set_defaults(run=run)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.output_dir)
    size = args.input_size
    torch.manual_seed(args.seed)
    _log(f"[1/5] data: {args.data} at {size}")
    train, val = split(load_dataset(args.data, size, seed=args.seed))
    n_classes = int(max(train.tensors[1].max(), val.tensors[1].max())) + 1
    loader = DataLoader(train, 64, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    val_loader = DataLoader(val, 256)

    _log(f"[2/5] training {args.model} from scratch ({args.epochs} epochs, {len(train)} images)")
    model = create_model(args.model, num_classes=n_classes, in_chans=size[0])
    base = finetune(model, loader, val_loader, FinetuneConfig(epochs=args.epochs, lr=0.05, seed=args.seed))
    x = torch.randn(1, *size)

    _log(f"[3/5] pruning with PFGDF to keep {args.target_macs:.0%} of MACs")
    result = prune(model, x, target_macs=args.target_macs, progress=True)
    pruned = result.model
    stale = evaluate(pruned, val_loader)

    _log("[4/5] recalibrating BatchNorm, fine-tuning")
    recalibrate_bn(pruned, loader, num_batches=20)
    recalibrated = evaluate(pruned, val_loader)
    tuned = finetune(pruned, loader, val_loader,
                     FinetuneConfig(epochs=args.finetune_epochs, lr=0.02, seed=args.seed), teacher=None)

    _log(f"[5/5] writing {out}/")
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
    print(f"\nreport: {out}/report.json, {out}/report.md; models: {out}/original.pt, {out}/pruned.pt")
    return 0


def _rows(s: dict) -> list[tuple[str, str, str]]:
    acc = s["accuracy"]
    return [
        ("val accuracy (digits)", f"{acc['unpruned']:.2%}", f"{acc['pruned_after_finetuning']:.2%}"),
        ("  pruned, stale BatchNorm", "", f"{acc['pruned_before_recalibration']:.2%}"),
        ("  pruned, recalibrated", "", f"{acc['pruned_after_recalibration']:.2%}"),
        ("parameters", f"{s['params']['before']:,}", f"{s['params']['after']:,}"),
        ("MACs", f"{s['macs']['before']:,.0f}", f"{s['macs']['after']:,.0f}"),
    ]


def _table(s: dict) -> str:
    lines = [f"{'':28}{'before':>14}{'after':>14}"]
    lines += [f"{a:28}{b:>14}{c:>14}" for a, b, c in _rows(s)]
    lines.append(f"PFGDF alpha {s['alpha']:.4f}; total {s['seconds']:.0f} s")
    return "\n".join(lines)


def _markdown(s: dict) -> str:
    lines = ["| | before | after |", "| --- | ---: | ---: |"]
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in _rows(s)]
    return "\n".join(lines) + f"\n\nPFGDF alpha {s['alpha']:.4f}; total {s['seconds']:.0f} s.\n"
