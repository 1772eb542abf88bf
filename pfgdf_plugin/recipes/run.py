"""The whole job as one call: data, train or load, prune, recover, export, time, report, driven by a `Recipe`.

`run_job` runs a recipe and writes a report folder: ``report.json``, ``report.md``, ``latency.png``,
``original.pt`` / ``pruned.pt`` and their ``.onnx`` exports (plus ``pruned.ort`` and ``pruned.int8.onnx`` when
asked). ``pfgdf demo`` is this job with a built-in recipe; ``pfgdf run --config recipe.yaml`` reads one from YAML.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from pfgdf_plugin._util import io as _io
from pfgdf_plugin.criteria import CHIPImportance, PFGDFImportance
from pfgdf_plugin.criteria.registry import calibrate
from pfgdf_plugin.data import load_dataset, split
from pfgdf_plugin.deploy import export_onnx, export_ort, quantize_int8
from pfgdf_plugin.measure import BenchmarkResult, benchmark_latency, recommended_round_to
from pfgdf_plugin.models.saved import save_pruned
from pfgdf_plugin.pruning.api import PruneResult, prune
from pfgdf_plugin.recipes.model import check_output, load_model
from pfgdf_plugin.recipes.recipe import Recipe
from pfgdf_plugin.recipes.report import summary_markdown, summary_table, thread_label
from pfgdf_plugin.recipes.sections import ZOO_MODELS
from pfgdf_plugin.recovery import FinetuneConfig, evaluate, finetune, recalibrate_bn

Log = Callable[[str], None]


@dataclass
class JobResult:
    """What `execute_job` did: the summary written to ``report.json``, the prune result, the files written
    (``reports``: report.json, report.md, latency.png; ``models``: .pt, .onnx, .ort files)."""

    summary: dict[str, Any]
    prune: PruneResult
    output_dir: Path
    reports: list[Path]
    models: list[Path]

    def table(self) -> str:
        """The before/after table ``pfgdf demo`` and ``pfgdf run`` print."""
        return summary_table(self.summary)

    def text(self) -> str:
        """Per-group pruning table, before/after table and where the files are: what the CLI prints."""
        return (f"{self.prune.table()}\n\n{self.table()}\n\nreport: {', '.join(map(str, self.reports))}; "
                f"models: {', '.join(map(str, self.models))}")


@dataclass
class _Data:
    """The job's images: training and validation sets, their loaders, and the class count."""

    train: TensorDataset
    val: TensorDataset
    num_classes: int
    loader: DataLoader
    val_loader: DataLoader


@dataclass
class _Accuracy:
    """Validation accuracy at each stage, and the training / fine-tuning histories."""

    unpruned: float
    training_history: list[dict[str, float]]
    pruned: float | None = None  # before recalibration: stale BatchNorm statistics
    recalibrated: float | None = None
    tuned: float | None = None
    finetune_history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Exports:
    """What the export stage wrote and measured."""

    exports: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, float] | None = None
    bench: BenchmarkResult | None = None
    timed: dict[str, Path] = field(default_factory=dict)
    models: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


def run_job(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Run ``recipe`` and return the summary it writes to ``<output_dir>/report.json``.

    Stages: load the data; build the model (or load ``model.checkpoint``) and train it; prune it; recalibrate
    BatchNorm and fine-tune; export both models to ONNX (checked against PyTorch); time them on ONNX Runtime;
    write ``report.json``, ``report.md``, ``latency.png`` and the models. ``progress`` logs stages and progress
    bars on stderr.

    Examples:
        >>> import tempfile
        >>> recipe = Recipe.from_dict({"input_size": [1, 8, 8], "data": {"limit": 400},
        ...     "train": {"epochs": 1}, "recover": {"finetune_epochs": 1}, "benchmark": {"runs": 5},
        ...     "output_dir": tempfile.mkdtemp()})
        >>> macs = run_job(recipe, progress=False)["macs"]
        >>> abs(macs["after"] / macs["before"] - 0.5) <= 0.01
        True
    """
    return execute_job(recipe, progress=progress).summary


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def execute_job(recipe: Recipe, *, progress: bool = True) -> JobResult:
    """`run_job`, returning the `JobResult` (summary, prune result, files) instead of the summary.

    Raises:
        ValueError: ``recipe`` is not a `Recipe`, or the data or model do not fit it.
        FileNotFoundError: a data source or checkpoint does not exist.
    """
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    recipe.check_files()
    recipe.check_model()
    start = time.perf_counter()
    out = Path(recipe.output_dir)
    log = partial(_log, progress)
    torch.manual_seed(recipe.seed)

    data = _load_data(recipe, log, progress)
    model, accuracy = _prepare_model(recipe, data, log, progress)
    result, round_to = _prune(recipe, model, data, log, progress)
    _recover(recipe, result.model, model, data, accuracy, log, progress)
    exported = _export(recipe, model, result.model, data.train, out, log, progress)

    log(f"[6/6] writing {out}/")
    _save_models(recipe, model, result.model, data.num_classes, out)
    summary = _summary(recipe, data, result, round_to, accuracy, exported, time.perf_counter() - start)
    _io.write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    _io.write_text(out / "report.md", f"# {recipe.name}\n\n" + summary_markdown(summary) + "\n")
    reports = [out / "report.json", out / "report.md", *exported.plots]
    models = [out / "original.pt", out / "pruned.pt", *exported.models]
    return JobResult(summary=summary, prune=result, output_dir=out, reports=reports, models=models)


def _load_data(recipe: Recipe, log: Log, progress: bool) -> _Data:
    """Stage 1: the training and validation sets at the recipe's input size."""
    d, size, seed = recipe.data, recipe.input_size, recipe.seed
    log(f"[1/6] data: {d.source} at {size}")
    dataset = load_dataset(d.source, size, limit=d.limit, seed=seed, progress=progress)
    if d.val_source is None:
        train, val = split(dataset, d.train_fraction)
    else:
        train, val = dataset, load_dataset(d.val_source, size, limit=d.limit, seed=seed, progress=progress)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"recipe: data: {len(train)} training and {len(val)} validation images; need both "
                         "(more images, data.limit, or data.train_fraction)")
    present = train.tensors[1].unique().tolist()
    if len(present) < 2:
        raise ValueError(f"recipe: data.source {d.source!r}: the training images carry {len(present)} label(s) "
                         f"{present}; a classifier needs two classes or more (with one, every prediction is right "
                         "and accuracy means nothing)")
    labels = int(max(train.tensors[1].max(), val.tensors[1].max())) + 1
    n_classes = recipe.model.num_classes or labels
    if n_classes < labels:
        raise ValueError(f"recipe: model.num_classes is {n_classes} but the data has labels up to {labels - 1}")
    loader = DataLoader(train, d.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return _Data(train, val, n_classes, loader, DataLoader(val, 256))


def _prepare_model(recipe: Recipe, data: _Data, log: Log, progress: bool) -> tuple[nn.Module, _Accuracy]:
    """Stage 2: build or load the model, check it runs, and train it for ``train.epochs``."""
    spec, size = recipe.model, recipe.input_size
    model, how = load_model(spec, data.num_classes, size[0])
    check_output(model, torch.randn(1, *size), data.num_classes)
    epochs = recipe.train.epochs or 0
    if not epochs:
        log(f"[2/6] {spec.name} {how}, no training (train.epochs: 0)")
        return model, _Accuracy(evaluate(model, data.val_loader), [])
    log(f"[2/6] training {spec.name} {how} ({epochs} epoch{'s' * (epochs > 1)}, {len(data.train)} images)")
    config = FinetuneConfig(epochs=epochs, lr=recipe.train.lr, opt=recipe.train.opt, seed=recipe.seed)
    base = finetune(model, data.loader, data.val_loader, config, progress=progress)
    return model, _Accuracy(base.best_accuracy, base.history)


def _prune(recipe: Recipe, model: nn.Module, data: _Data, log: Log, progress: bool) -> tuple[PruneResult, int | None]:
    """Stage 3: prune with PFGDF or CHIP (calibrated on training batches); returns the result and ``round_to``."""
    p = recipe.prune
    round_to = recommended_round_to() if p.round_to == "auto" else p.round_to
    goal = (f"to keep {p.target_macs:.0%} of MACs" if p.target_macs is not None else
            f"to keep {p.target_params:.0%} of parameters" if p.target_params is not None else f"at alpha {p.alpha:g}")
    log(f"[3/6] pruning with {p.method.upper()} {goal}")
    importance: Any = CHIPImportance() if p.method == "chip" else PFGDFImportance(statistic=p.statistic)
    calibrate([importance], model, DataLoader(data.train, recipe.data.batch_size), num_batches=p.calib_batches,
              progress=progress)
    result = prune(model, torch.randn(1, *recipe.input_size), alpha=p.alpha, target_macs=p.target_macs,
                   target_params=p.target_params, importance=importance, round_to=round_to,
                   min_channels=p.min_channels, progress=progress)
    return result, round_to  # type: ignore[return-value]


def _recover(recipe: Recipe, pruned: nn.Module, teacher: nn.Module, data: _Data, accuracy: _Accuracy, log: Log,
             progress: bool) -> None:
    """Stage 4: recalibrate BatchNorm and fine-tune ``pruned`` in place, recording accuracy after each step."""
    r = recipe.recover
    accuracy.pruned = evaluate(pruned, data.val_loader)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pruned.modules())
    steps = ["recalibrating BatchNorm"] if r.recalibrate_batches and has_bn else []
    if r.finetune_epochs:
        plural = "s" * (r.finetune_epochs > 1)
        steps.append(f"fine-tuning ({r.finetune_epochs} epoch{plural}{', distilled' if r.distill else ''})")
    log("[4/6] " + (", ".join(steps) or "no recovery"))
    if r.recalibrate_batches and has_bn:
        recalibrate_bn(pruned, data.loader, num_batches=r.recalibrate_batches)
        accuracy.recalibrated = evaluate(pruned, data.val_loader)
    accuracy.tuned = accuracy.recalibrated if accuracy.recalibrated is not None else accuracy.pruned
    if r.finetune_epochs:
        config = FinetuneConfig(epochs=r.finetune_epochs, lr=r.lr, opt=r.opt, seed=recipe.seed,
                                distill_weight=r.distill_weight if r.distill else 0.0)
        tuned = finetune(pruned, data.loader, data.val_loader, config, teacher=teacher if r.distill else None,
                         progress=progress)
        accuracy.tuned, accuracy.finetune_history = tuned.best_accuracy, tuned.history


def _export(recipe: Recipe, model: nn.Module, pruned: nn.Module, train: TensorDataset, out: Path,
            log: Log, progress: bool) -> _Exports:
    """Stage 5: ONNX exports of both models (and ORT / INT8 of the pruned one), then their latency."""
    e, b, size = recipe.export, recipe.benchmark, recipe.input_size
    done = _Exports()
    if not e.onnx:
        log("[5/6] no export (export.onnx: false)")
        return done
    timing = f" and measuring latency (ONNX Runtime, {thread_label(b.threads)}, {b.runs} runs)" if b.runs else ""
    log(f"[5/6] exporting to ONNX{timing}")
    onnx_original = export_onnx(model, out / "original.onnx", size)
    onnx_pruned = export_onnx(pruned, out / "pruned.onnx", size)
    done.exports["onnx"] = {"original": onnx_original.to_dict(), "pruned": onnx_pruned.to_dict()}
    done.parity = {"original": onnx_original.parity.relative_error, "pruned": onnx_pruned.parity.relative_error}
    done.models += [onnx_original.path, onnx_pruned.path]
    done.timed["pruned"] = onnx_pruned.path
    if e.ort:
        ort = export_ort(onnx_pruned.path, out, target_platform=e.ort_target_platform, reference=pruned)
        done.exports["ort"] = ort.to_dict()
        done.models.append(ort.path)
    if e.int8:
        calib = train.tensors[0][:160]  # quantize_int8's default 5 batches of 32
        q = quantize_int8(onnx_pruned.path, out / "pruned.int8.onnx", calib,
                          calibration_label=f"{len(calib)} training images of {recipe.data.source}")
        done.exports["int8"] = q.to_dict()
        done.models.append(q.path)
        done.timed["pruned.int8"] = q.path
    if b.runs:
        done.bench = benchmark_latency(done.timed, baseline=onnx_original.path, threads=b.threads, runs=b.runs,
                                       seed=recipe.seed, progress=progress)
        done.plots.append(done.bench.plot(out / "latency.png"))
    return done


def _save_models(recipe: Recipe, model: nn.Module, pruned: nn.Module, num_classes: int, out: Path) -> None:
    """Both models as ``save_pruned`` files, with what ``pfgdf export`` / ``bench`` need to rebuild the original."""
    spec, size = recipe.model, recipe.input_size
    # pfgdf export / bench rebuild the unpruned model from "timm_model", which must then need nothing else.
    if spec.name in ZOO_MODELS or spec.kwargs:
        meta: dict[str, Any] = {"model": spec.name, "model_kwargs": spec.kwargs}
    else:
        meta = {"timm_model": spec.name}
    meta |= {"num_classes": num_classes, "in_chans": size[0], "input_size": list(size)}
    save_pruned(pruned, out / "pruned.pt", metadata=meta)
    save_pruned(model, out / "original.pt", metadata=meta)


def _latency(bench: BenchmarkResult | None, threads: tuple[int, ...], timed: dict[str, Path]) -> dict[str, Any]:
    """The summary's latency keys: the demo's at 1 thread, and every thread count (the table shows the first)."""
    if bench is None:
        return {"latency_ms_1_thread": None, "speedup_1_thread": None, "efficiency_1_thread": None,
                "latency_ms": None, "latency_threads": None, "speedup": None, "efficiency": None}
    latency = {str(t): {k: {"median": bench.measurement(k, t).median_ms, "p90": bench.measurement(k, t).p90_ms}
                        for k in ("original", *timed)} for t in threads}
    first = bench.measurement("pruned", threads[0])
    one = bench.measurement("pruned", 1) if 1 in threads else None
    return {
        "latency_ms_1_thread": None if one is None else latency["1"],
        "speedup_1_thread": None if one is None else one.speedup,
        "efficiency_1_thread": None if one is None else one.efficiency,
        "latency_ms": latency,
        "latency_threads": first.threads,
        "speedup": first.speedup,
        "efficiency": first.efficiency,
    }


def _summary(recipe: Recipe, data: _Data, result: PruneResult, round_to: int | None, accuracy: _Accuracy,
             exported: _Exports, seconds: float) -> dict[str, Any]:
    """What ``report.json`` holds."""
    p = recipe.prune
    return {
        "name": recipe.name, "model": recipe.model.name, "data": recipe.data.source,
        "val_data": recipe.data.val_source, "input_size": list(recipe.input_size),
        "num_classes": data.num_classes, "train_images": len(data.train), "val_images": len(data.val),
        "method": p.method, "alpha": result.alpha, "target_macs": p.target_macs, "target_params": p.target_params,
        "round_to": round_to,
        "accuracy": {"unpruned": accuracy.unpruned, "pruned_before_recalibration": accuracy.pruned,
                     "pruned_after_recalibration": accuracy.recalibrated,
                     "pruned_after_finetuning": accuracy.tuned},
        "params": {"before": result.params_before, "after": result.params_after},
        "macs": {"before": result.macs_before, "after": result.macs_after},
        **_latency(exported.bench, recipe.benchmark.threads, exported.timed),
        "onnx_parity_relative_error": exported.parity,
        "exports": exported.exports,
        "benchmark": None if exported.bench is None else exported.bench.to_dict(),
        "seconds": seconds,
        "training_history": accuracy.training_history, "finetune_history": accuracy.finetune_history,
        "prune_report": result.to_dict(),
        "recipe": recipe.to_dict(),
    }


__all__ = ["JobResult", "execute_job", "run_job"]
