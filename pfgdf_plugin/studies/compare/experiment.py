"""The comparison itself: train the network once, then prune, recalibrate and fine-tune one copy per cell."""

from __future__ import annotations

import copy
import dataclasses
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

from pfgdf_plugin.criteria import registry
from pfgdf_plugin.data import load_dataset, split
from pfgdf_plugin.measure.platform import environment
from pfgdf_plugin.models.zoo import SmallCNN
from pfgdf_plugin.pruning.api import prune
from pfgdf_plugin.recovery import FinetuneConfig, evaluate, finetune, recalibrate_bn, train_loader
from pfgdf_plugin.studies.compare.config import (
    BATCH,
    CALIB_BATCHES,
    DESCRIPTIONS,
    RECAL_BATCHES,
    SIZES,
    CompareConfig,
)
from pfgdf_plugin.studies.compare.latency import export_model, measure_latency, variant
from pfgdf_plugin.studies.compare.summary import stats, summarise

Cell = tuple[str, float, int]
"""(criterion, MACs target, seed)."""


@dataclass(frozen=True)
class Setup:
    """What every step of one `compare` call shares (data, the example input, progress bar, output folder)."""

    cfg: CompareConfig
    train: TensorDataset
    test: TensorDataset
    test_loader: DataLoader
    example: torch.Tensor
    size: tuple[int, int, int]
    bar: tqdm
    folder: Path


def compare(config: CompareConfig | None = None, *, progress: bool = False) -> dict[str, Any]:
    """Run the criteria benchmark of ``config`` and return its report (JSON-serialisable).

    One failing cell (criterion x target x seed) is recorded with an ``"error"`` and does not stop the others.

    Args:
        config: the options (default: `CompareConfig` defaults: MNIST, all criteria, 3 targets, 3 seeds).
        progress: one progress bar on stderr (a step per training, anchor fine-tune, cell, latency run).

    Returns:
        ``{"config", "criteria", "environment", "unpruned", "runs", "summary", "latency", "seconds"}``: ``runs``
        has one row per cell (accuracies from 0 to 1, MACs / params kept, latency at 1 thread, ...), ``summary``
        one per (criterion, target) with mean / min / max / std over seeds; `table` and `plot` render it.

    Raises:
        ValueError: ``config`` is not a `CompareConfig`.

    Examples:
        >>> config = CompareConfig.smoke(criteria=["pfgdf-l1"], targets=[0.5], seeds=[0], latency=False, limit=200)
        >>> report = compare(config)
        >>> cell = report["runs"][0]
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
            return _run(prepare(cfg, Path(tmp), bar), cells, start)
    finally:
        bar.close()
        torch.set_num_threads(threads)


def prepare(cfg: CompareConfig, folder: Path, bar: tqdm | None = None) -> Setup:
    """Load and split ``cfg``'s data set; the setup every step of the comparison shares (``bar``: a progress bar
    to report to, by default a silent one)."""
    bar = tqdm(disable=True) if bar is None else bar
    size = SIZES[cfg.data]
    train, test = split(load_dataset(cfg.data, size, limit=cfg.limit), 0.8)
    return Setup(cfg, train, test, DataLoader(test, batch_size=256), torch.randn(1, *size), size, bar, folder)


def _run(s: Setup, cells: list[Cell], start: float) -> dict[str, Any]:
    base, unpruned = train_base(s)
    unpruned["acc_finetuned"] = stats(anchor_finetuned(base, s))
    runs, onnx_files = _run_cells(base, cells, s)
    report_latency: dict[str, Any] | None = None
    if s.cfg.latency:
        s.bar.set_description("latency (ONNX Runtime, 1 thread)")
        anchor, report_latency = measure_latency(base, onnx_files, runs, size=s.size, folder=s.folder,
                                                 timed_runs=s.cfg.latency_runs)
        unpruned |= anchor
        s.bar.update()
    return {
        "config": _config_record(s),
        "criteria": {c: {"how": DESCRIPTIONS[c]} for c in s.cfg.criteria},
        "environment": environment(),
        "unpruned": unpruned,
        "runs": runs,
        "summary": summarise(runs),
        "latency": report_latency,
        "seconds": time.perf_counter() - start,
    }


def _config_record(s: Setup) -> dict[str, Any]:
    cfg = s.cfg
    return dataclasses.asdict(cfg) | {
        "targets": list(cfg.targets), "seeds": list(cfg.seeds), "criteria": list(cfg.criteria),
        "batch_size": BATCH, "calibration_batches": CALIB_BATCHES, "recalibration_batches": RECAL_BATCHES,
        "train_images": len(s.train), "test_images": len(s.test), "threads": torch.get_num_threads(),
    }


def train_base(s: Setup) -> tuple[nn.Module, dict[str, Any]]:
    """Train the unpruned network (seed 0); its accuracy, MACs, params and training history."""
    s.bar.set_description(f"training ({s.cfg.train_epochs} epochs)")
    torch.manual_seed(0)
    base = SmallCNN(s.size[0], 10, s.cfg.width)
    t0 = time.perf_counter()
    fr = finetune(base, train_loader(s.train, BATCH, seed=0), s.test_loader,
                  FinetuneConfig(epochs=s.cfg.train_epochs, lr=s.cfg.train_lr, seed=0), progress=False)
    train_s = time.perf_counter() - t0
    base_acc = evaluate(base, s.test_loader)
    macs, params = tp.utils.count_ops_and_params(base, s.example)
    s.bar.update()
    s.bar.set_postfix_str(f"unpruned acc {base_acc:.3f}")
    # "acc_finetuned" (the second anchor) is filled in next; the key keeps its place in the report.
    return base, {"accuracy": base_acc, "acc_finetuned": None, "macs": macs, "params": params,
                  "train_seconds": train_s, "train_history": fr.history}


def anchor_finetuned(base: nn.Module, s: Setup) -> list[float]:
    """The second anchor: the unpruned network given the same recalibration and fine-tuning budget as every cell."""
    s.bar.set_description("unpruned + same fine-tuning")
    accuracies = []
    for seed in s.cfg.seeds:
        torch.manual_seed(seed)
        m = copy.deepcopy(base)
        recalibrate_bn(m, train_loader(s.train, BATCH, seed=seed), RECAL_BATCHES)
        accuracies.append(finetune(m, train_loader(s.train, BATCH, seed=seed), s.test_loader,
                                   FinetuneConfig(epochs=s.cfg.finetune_epochs, lr=s.cfg.finetune_lr, seed=seed),
                                   progress=False).best_accuracy)
        s.bar.update()
    return accuracies


def _run_cells(base: nn.Module, cells: list[Cell], s: Setup) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Every cell's row (or its ``"error"``), and the ONNX file of every exported pruned model."""
    onnx_files: dict[str, Path] = {}
    runs: list[dict[str, Any]] = []
    s.bar.set_description("cells")
    for i, (crit, target, seed) in enumerate(cells):
        try:
            row, pruned = _run_cell(base, crit, target, seed, s)
        except Exception as exc:  # one failing criterion must not lose the others' results
            row = {"criterion": crit, "target": target, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}
            s.bar.write(f"{crit} target {target} seed {seed}: FAILED {row['error']}", file=sys.stderr)
        else:
            if s.cfg.latency:
                path = s.folder / f"cell{i}.onnx"
                try:
                    export_model(pruned, path, s.size)
                    onnx_files[variant(row)] = path
                except Exception as exc:  # the accuracies stand without a latency
                    row["latency_error"] = f"{type(exc).__name__}: {exc}"
            s.bar.set_postfix_str(f"{crit} @{target:g} seed {seed}: MACs {row['macs_kept']:.3f}, "
                                  f"fine-tuned acc {row['acc_finetuned']:.3f}")
        runs.append(row)
        s.bar.update()
    return runs, onnx_files


def _first_batches(loader: DataLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, batch in enumerate(loader):
        if i >= n:
            break
        out.append(batch)
    return out


def _prepared_criterion(model: nn.Module, name: str, seed: int, train: TensorDataset) -> registry.Built:
    """Build criterion ``name`` and give it what it needs from ``model``: CHIP calibration, Taylor gradients."""
    built = registry.build(name)
    calib = _first_batches(train_loader(train, BATCH, seed=seed), CALIB_BATCHES)
    registry.calibrate([built.importance, built.rank_by], model, calib)
    if registry.CRITERIA[name].needs_gradients:
        model.zero_grad(set_to_none=True)
        model.eval()  # BN uses the trained statistics: the gradients are those of the deployed network
        for images, labels in calib:
            (F.cross_entropy(model(images), labels) / len(calib)).backward()
    return built


def _run_cell(base: nn.Module, name: str, target: float, seed: int, s: Setup) -> tuple[dict[str, Any], nn.Module]:
    """Prune a copy of ``base`` with one criterion to one MACs target; measure stale, recalibrated, fine-tuned."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    built = _prepared_criterion(model, name, seed, s.train)
    t0 = time.perf_counter()
    # In place on our own copy: a deep copy inside prune() would drop the gradients Taylor needs.
    res = prune(model, s.example, target_macs=target, importance=built.importance, rank_by=built.rank_by,
                round_to=s.cfg.round_to, inplace=True)
    prune_s = time.perf_counter() - t0
    pruned = res.model
    pruned.zero_grad(set_to_none=True)
    recovered = recover(pruned, seed, s)
    row = {
        "criterion": name, "target": target, "seed": seed,
        "macs_kept": res.macs_kept, "params_kept": res.params_kept,
        "macs_after": res.macs_after, "params_after": res.params_after,
        **recovered, "prune_seconds": prune_s,
        "groups_kept": {g.root: round(g.kept, 4) for g in res.groups},
    }
    return row, pruned


def recover(pruned: nn.Module, seed: int, s: Setup) -> dict[str, Any]:
    """Every cell's recovery, in place: accuracy as pruned (``acc_stale``), after BatchNorm recalibration
    (``acc_recal``) and after the fine-tuning budget (``acc_finetuned``, with ``finetune_seconds``)."""
    acc_stale = evaluate(pruned, s.test_loader)
    recalibrate_bn(pruned, train_loader(s.train, BATCH, seed=seed), RECAL_BATCHES)
    acc_recal = evaluate(pruned, s.test_loader)
    t1 = time.perf_counter()
    fr = finetune(pruned, train_loader(s.train, BATCH, seed=seed), s.test_loader,
                  FinetuneConfig(epochs=s.cfg.finetune_epochs, lr=s.cfg.finetune_lr, seed=seed), progress=False)
    return {"acc_stale": acc_stale, "acc_recal": acc_recal, "acc_finetuned": fr.best_accuracy,
            "finetune_seconds": time.perf_counter() - t1}
