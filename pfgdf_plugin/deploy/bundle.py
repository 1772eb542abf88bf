"""The multi-format export workflow behind `pfgdf export`: a saved pruned model to a directory of verified files.

`export_bundle` writes `model.onnx` (and `original.onnx`, the unpruned architecture rebuilt from the saved
metadata with random weights: a latency anchor), optionally `model.ort` with its reduced-build operator config,
`model.int8.onnx` (and its `.ort`), and a JSON summary `export.json`. Everything that can fail on bad input
fails before the first file is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.data import BUILTIN, calibration_loader
from pfgdf_plugin.deploy.int8 import ACTIVATION_TYPES, INT8_AGREEMENT_THRESHOLD, Int8Export, quantize_int8
from pfgdf_plugin.deploy.onnx import DEFAULT_OPSET, OnnxExport, export_onnx
from pfgdf_plugin.deploy.ort import OrtExport, export_ort, write_operator_config
from pfgdf_plugin.deploy.parity import PARITY_TOLERANCE
from pfgdf_plugin.models.saved import load_pruned_with_metadata

FORMATS: tuple[str, ...] = ("onnx", "ort")
REPORT_NAME = "export.json"
# Saved-model metadata carried into model.onnx's pfgdf.* entries.
_KEPT_METADATA = ("source", "timm_model", "alpha", "target", "macs_kept", "params_kept", "latency_target")


@dataclass(frozen=True)
class BundleConfig:
    """What `export_bundle` writes and how; the defaults are those of `pfgdf export`.

    Attributes:
        formats: `"onnx"` and/or `"ort"` (`"ort"` also writes the `.onnx` it is converted from).
        calibration: INT8 calibration images (`"digits"`, `"mnist"`, an ImageFolder directory, a `.pt` file);
            `None`: no INT8 model.
        calib_batches: calibration batches.
        calib_batch_size: images per calibration batch.
        activation_type: INT8 activations, `"uint8"` or `"int8"`.
        input_size: one sample's shape; `None`: the size saved with the model.
        opset: ONNX opset.
        exporter: `"dynamo"` or `"torchscript"`.
        dynamic_batch: symbolic batch dimension.
        target_platform: `"arm"` or `"amd64"`, for the ORT-format optimizations.
        type_reduction: the operator config also lists each operator's types.
        tolerance: largest accepted relative parity error.
        baseline: also write `original.onnx` when the metadata names a timm model.
        usability: run the NNAPI / CoreML usability check on the ORT model.
        trust_pickle: accept a pickled model file (pfgdf-plugin 0.1); unpickling runs any code it holds.
    """

    formats: tuple[str, ...] = ("onnx",)
    calibration: str | None = None
    calib_batches: int = 5
    calib_batch_size: int = 32
    activation_type: str = "uint8"
    input_size: tuple[int, ...] | None = None
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    dynamic_batch: bool = False
    target_platform: str = "arm"
    type_reduction: bool = False
    tolerance: float = PARITY_TOLERANCE
    baseline: bool = True
    usability: bool = True
    trust_pickle: bool = False


@dataclass
class BundleResult:
    """What `export_bundle` wrote; `to_dict()` is the content of `export.json`."""

    source: str
    metadata: dict[str, Any]
    input_size: tuple[int, ...]
    report_path: Path
    onnx: OnnxExport | None = None
    original: OnnxExport | None = None
    ort: OrtExport | None = None
    int8: Int8Export | None = None
    int8_ort: OrtExport | None = None
    operator_config: Path | None = None
    baseline_note: str | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def macs_reduction(self) -> float | None:
        """Original MACs / pruned MACs (the most a dense pruned model can gain); `None` without a baseline."""
        if self.original is None or self.onnx is None:
            return None
        return self.original.macs / self.onnx.macs

    def to_dict(self) -> dict[str, Any]:
        """The summary written to `export.json`: only the parts that were exported."""
        out: dict[str, Any] = {"source": self.source, "metadata": self.metadata, "input_size": list(self.input_size),
                               "baseline_note": self.baseline_note}
        parts = {"onnx": self.onnx, "original": self.original, "macs_reduction": self.macs_reduction,
                 "ort": self.ort, "int8": self.int8, "int8_ort": self.int8_ort}
        for key, value in parts.items():
            if value is not None:
                out[key] = value if isinstance(value, float) else value.to_dict()
        if self.operator_config is not None:
            out["operator_config"] = str(self.operator_config)
        out["seconds"] = self.seconds
        return out


@dataclass
class _Plan:
    """Everything loaded and checked before the first file is written."""

    model: torch.nn.Module
    metadata: dict[str, Any]
    size: tuple[int, ...]
    original: torch.nn.Module | None
    baseline_note: str | None
    calibration: torch.Tensor | None


def bundle_paths(output_dir: str | os.PathLike, type_reduction: bool = False) -> dict[str, Path]:
    """Every file `export_bundle` may write in `output_dir`, by role.

    Examples:
        >>> bundle_paths("out")["int8_ort"].as_posix()
        'out/model.int8.ort'
    """
    out = Path(output_dir)
    config = "required_operators_and_types.config" if type_reduction else "required_operators.config"
    return {
        "model": out / "model.onnx",
        "original": out / "original.onnx",
        "ort": out / "model.ort",
        "int8": out / "model.int8.onnx",
        "int8_ort": out / "model.int8.ort",
        "ops": out / config,
        "ort_ops": out / f"model.{config}",
        "int8_ops": out / f"model.int8.{config}",
        "report": out / REPORT_NAME,
    }


def export_bundle(
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: BundleConfig | None = None,
    *,
    log: Callable[[str], None] | None = None,
    names: Mapping[str, str] | None = None,
) -> BundleResult:
    """Export a model file written by `save_pruned` / `pfgdf prune` to every format `config` asks for.

    Each ONNX / ORT file is written only after its parity check passed; `export.json` is written last.

    Args:
        model_path: the `.pt` file with the pruned model and its metadata.
        output_dir: the directory for the files (created if missing).
        config: what to write; `BundleConfig()` when `None`.
        log: receives progress messages (none when `None`).
        names: how errors name `config`'s fields and `output_dir`, e.g. `{"input_size": "--input-size"}`
            (default: the field names).

    Returns:
        What was written.

    Raises:
        FileNotFoundError: no model file or calibration path.
        ValueError: a bad argument or a model that cannot run on the input size (nothing is written).
        ParityError: an exported file disagrees with its reference (it is not written; export.json neither).
    """
    config = config or BundleConfig()
    say = log or (lambda _msg: None)
    labels = dict(names or {})

    def name(key: str) -> str:
        return labels.get(key, key)

    paths = _checked_paths(model_path, output_dir, config, name)
    out = paths["report"].parent
    with _io.output_lock(out):
        plan = _prepare(model_path, config, name, say)
        start = time.perf_counter()
        # Every file of this run goes to a fresh staging directory first (so nothing reads a file an earlier run
        # left in `output_dir`), then moves in as one set, export.json last.
        with _io.staged_directory(out) as stage:
            staged = bundle_paths(stage, config.type_reduction)
            result = BundleResult(source=str(model_path), metadata=plan.metadata, input_size=plan.size,
                                  report_path=paths["report"], baseline_note=plan.baseline_note)
            _export_float(plan, staged, config, result, say)
            if plan.calibration is not None:
                _export_int8(plan.calibration, staged, config, result, say)
            result.seconds = time.perf_counter() - start
            _repoint(result, stage, out)
            _io.write_text(staged["report"], json.dumps(result.to_dict(), indent=2, default=str) + "\n")
            _io.commit_staged(stage, out, REPORT_NAME, [p.name for p in paths.values()])
    say(f"wrote {paths['report']}")
    return result


def _repoint(result: BundleResult, stage: Path, out: Path) -> None:
    """Make every path a result holds name the committed file in ``out`` instead of its staged copy."""
    for part in (result.onnx, result.original, result.ort, result.int8, result.int8_ort):
        for f in dataclasses.fields(part) if part is not None else ():
            value = getattr(part, f.name)
            if isinstance(value, Path) and value.parent == stage:
                setattr(part, f.name, out / value.name)
    if result.operator_config is not None and result.operator_config.parent == stage:
        result.operator_config = out / result.operator_config.name


def _checked_paths(model_path: str | os.PathLike, output_dir: str | os.PathLike, config: BundleConfig,
                   name: Callable[[str], str]) -> dict[str, Path]:
    out = check.output_directory(name("output_dir"), output_dir)
    for fmt in check.sequence(name("formats"), config.formats):
        check.one_of(name("formats"), fmt, FORMATS)
    check.integer(name("calib_batches"), config.calib_batches, 1)
    check.integer(name("calib_batch_size"), config.calib_batch_size, 1)
    check.one_of(name("activation_type"), config.activation_type, ACTIVATION_TYPES)
    calibration = check.optional_text(name("calibration"), config.calibration)
    paths = bundle_paths(out, config.type_reduction)
    inputs = [model_path] + ([calibration] if calibration and calibration not in BUILTIN else [])
    check.distinct(inputs, list(paths.values()))
    return paths


def _prepare(model_path: str | os.PathLike, config: BundleConfig, name: Callable[[str], str],
             say: Callable[[str], None]) -> _Plan:
    """Load the model, its unpruned original and the calibration images, and check they run on the input size."""
    model, meta = load_pruned_with_metadata(model_path, trust_pickle=config.trust_pickle)
    size = config.input_size or meta.input_size
    if size is None:
        raise ValueError(f"{str(model_path)!r} has no input size in its metadata; pass {name('input_size')}")
    size = check.shape(name("input_size"), size)
    _check_runs("model", model, size, name)
    original, note = None, None
    if config.baseline and meta.timm_model:
        original = meta.original_model()
        _check_runs(f"original ({meta.timm_model})", original, size, name)
    elif config.baseline:
        note = (f"no baseline: the metadata of {str(model_path)!r} names no timm_model (it was not made by "
                "`pfgdf prune --model`), so the unpruned architecture cannot be rebuilt; original.onnx skipped")
        say(note)
    calib = None
    if config.calibration:
        say(f"loading calibration images from {config.calibration!r} ...")
        loader = calibration_loader(config.calibration, size, batch_size=config.calib_batch_size,
                                    num_batches=config.calib_batches)
        calib = torch.cat([batch[0] for batch in loader])
    return _Plan(model, meta.to_dict(), size, original, note, calib)


def _check_runs(what: str, model: torch.nn.Module, size: tuple[int, ...], name: Callable[[str], str]) -> None:
    with eval_mode(model), torch.no_grad():
        try:
            model(torch.randn(1, *size))
        except Exception as err:
            raise ValueError(f"{name('input_size')} {'x'.join(map(str, size))}: the {what} cannot run on it: {err}"
                             ) from err


def _export_float(plan: _Plan, paths: dict[str, Path], config: BundleConfig, result: BundleResult,
                  say: Callable[[str], None]) -> None:
    """model.onnx, original.onnx and model.ort, into `result`."""
    common = {"opset": config.opset, "dynamic_batch": config.dynamic_batch, "exporter": config.exporter,
              "tolerance": config.tolerance}
    meta = plan.metadata
    say(f"exporting {paths['model']} (opset {config.opset}, {config.exporter} exporter) ...")
    kept = {k: meta[k] for k in _KEPT_METADATA if meta.get(k) is not None}
    result.onnx = export_onnx(plan.model, paths["model"], plan.size, **common, metadata={"variant": "pruned"} | kept)
    if plan.original is not None:
        say(f"exporting {paths['original']} (unpruned {meta['timm_model']}, random weights) ...")
        result.original = export_onnx(plan.original, paths["original"], plan.size, **common,
                                      metadata={"variant": "original", "timm_model": meta["timm_model"]})
    if "ort" in config.formats:
        say(f"converting to ORT format for {config.target_platform} ...")
        result.ort = export_ort(result.onnx.path, paths["model"].parent, target_platform=config.target_platform,
                                reference=plan.model, type_reduction=config.type_reduction,
                                check_usability=config.usability, tolerance=config.tolerance)


def _export_int8(images: torch.Tensor, paths: dict[str, Path], config: BundleConfig, result: BundleResult,
                 say: Callable[[str], None]) -> None:
    """model.int8.onnx (from model.onnx), its .ort and the operator config shared by both .ort files, into `result`."""
    say(f"quantizing to INT8 with {len(images)} calibration images ...")
    int8 = quantize_int8(paths["model"], paths["int8"], images, batch_size=config.calib_batch_size,
                         num_batches=config.calib_batches, activation_type=config.activation_type,
                         calibration_label=f"{len(images)} images of {config.calibration!r}")
    result.int8 = int8
    if int8.top1_agreement is not None and int8.top1_agreement < INT8_AGREEMENT_THRESHOLD:
        result.warnings.append(
            f"warning: INT8 top-1 agreement {int8.top1_agreement:.1%} is below the "
            f"{INT8_AGREEMENT_THRESHOLD:.0%} measured on the test models; check the INT8 model on real "
            "data (random-weight networks have small logit margins, to which this proxy is sensitive)"
        )
    if result.ort is not None:
        say("converting the INT8 model to ORT format ...")
        result.int8_ort = export_ort(int8.path, paths["int8"].parent, target_platform=config.target_platform,
                                     type_reduction=config.type_reduction, check_usability=False,
                                     tolerance=config.tolerance)
        write_operator_config([result.ort.path, result.int8_ort.path], paths["ops"],
                              type_reduction=config.type_reduction)
        result.operator_config = paths["ops"]
