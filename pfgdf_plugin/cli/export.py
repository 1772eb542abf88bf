"""``pfgdf export``: a saved pruned model to ONNX (and the unpruned anchor), ORT format, INT8; every file verified."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.cli import _common
from pfgdf_plugin.data import BUILTIN, calibration_loader
from pfgdf_plugin.deploy.export import (
    ACTIVATION_TYPES,
    DEFAULT_OPSET,
    EXPORTERS,
    INT8_AGREEMENT_THRESHOLD,
    PARITY_TOLERANCE,
    TARGET_PLATFORMS,
    ParityError,
    export_onnx,
    export_ort,
    quantize_int8,
    write_operator_config,
)
from pfgdf_plugin.models.saved import load_pruned_with_metadata
from pfgdf_plugin.models.timm import create_model

FORMATS = ("onnx", "ort")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a pruned model to ONNX / ORT format (and INT8), each file verified",
        description="Export a model file written by `pfgdf prune` to OUTPUT_DIR/model.onnx (checked with "
        "onnx.checker and against PyTorch in ONNX Runtime: max abs error / max abs output <= tolerance), plus "
        "OUTPUT_DIR/original.onnx, the unpruned architecture rebuilt from the saved metadata (random weights: "
        "a latency anchor for `pfgdf bench --baseline`). --format ort adds model.ort and its "
        "required-operators config for a reduced ONNX Runtime Mobile build (onnxruntime's converter) and an "
        "NNAPI / CoreML usability report. --int8 adds model.int8.onnx (onnxruntime's static QDQ quantizer, "
        "per-channel) calibrated on real images. A summary goes to OUTPUT_DIR/export.json; tables on stdout, "
        "progress on stderr. Every file is written atomically; ONNX and ORT files only after their parity check "
        "passed.",
    )
    p.add_argument("model", help="model file (.pt) written by pfgdf prune / save_pruned")
    p.add_argument("--output-dir", required=True, help="directory for the exported files (created if missing)")
    p.add_argument("--format", dest="formats", action="append", choices=FORMATS, default=None,
                   help="onnx and/or ort; repeat for both (default: onnx; ort always writes the .onnx too)")
    p.add_argument("--int8", metavar="CALIB", default=None,
                   help=f"also quantize to INT8 with calibration images from CALIB: {' or '.join(BUILTIN)} "
                   "(built in), an ImageFolder directory, or a .pt file of images")
    p.add_argument("--calib-batches", type=int, default=5, help="calibration batches (default: 5)")
    p.add_argument("--calib-batch-size", type=int, default=32, help="images per calibration batch (default: 32)")
    p.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="uint8",
                   help="INT8 activation type (default: uint8, which ONNX Runtime fuses into integer kernels on "
                   "any CPU; int8 activations ran 2.7x slower on x86 for resnet18)")
    p.add_argument("--input-size", type=_common.input_size, default=None,
                   help="input as SIZE, HxW or CxHxW (default: the size saved with the model)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export-based, default) or the legacy torchscript")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="symbolic batch dimension (default: batch fixed to 1, which NNAPI / CoreML prefer)")
    p.add_argument("--target-platform", choices=TARGET_PLATFORMS, default="arm",
                   help="platform the ORT-format optimizations are fixed for (default: arm)")
    p.add_argument("--type-reduction", action="store_true",
                   help="ORT config also lists the types each operator needs (a smaller reduced build)")
    p.add_argument("--tolerance", type=_common.positive, default=PARITY_TOLERANCE,
                   help=f"largest accepted max abs error / max abs output (default: {PARITY_TOLERANCE:g})")
    p.add_argument("--no-baseline", action="store_true", help="do not write original.onnx")
    p.add_argument("--no-usability", action="store_true", help="skip the NNAPI / CoreML usability check")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    log = (lambda *_a, **_k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    formats = set(args.formats or ["onnx"])
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} exists and is not a directory")
    if args.calib_batches < 1 or args.calib_batch_size < 1:
        raise ValueError(f"--calib-batches and --calib-batch-size must be >= 1, got {args.calib_batches} and "
                         f"{args.calib_batch_size}")
    config = "required_operators_and_types.config" if args.type_reduction else "required_operators.config"
    paths = {
        "model": out / "model.onnx",
        "original": out / "original.onnx",
        "ort": out / "model.ort",
        "int8": out / "model.int8.onnx",
        "int8_ort": out / "model.int8.ort",
        "ops": out / config,
        "ort_ops": out / f"model.{config}",
        "int8_ops": out / f"model.int8.{config}",
        "report": out / "export.json",
    }
    inputs = [args.model] + ([args.int8] if args.int8 and args.int8 not in BUILTIN else [])
    _common.distinct_outputs(inputs, list(paths.values()))

    # ---- everything that can fail on bad input, before the first file is written ----
    model, meta = load_pruned_with_metadata(args.model)
    size = args.input_size or (tuple(meta["input_size"]) if meta.get("input_size") else None)
    if size is None:
        raise ValueError(f"{args.model!r} has no input size in its metadata; pass --input-size")
    _check_runs("model", model, size)
    original = None
    baseline_note = None
    if not args.no_baseline:
        if meta.get("timm_model"):
            original = create_model(meta["timm_model"], num_classes=meta.get("num_classes"),
                                    in_chans=meta.get("in_chans"))
            _check_runs(f"original ({meta['timm_model']})", original, size)
        else:
            baseline_note = (
                f"no baseline: the metadata of {args.model!r} names no timm_model (it was not made by "
                "`pfgdf prune --model`), so the unpruned architecture cannot be rebuilt; original.onnx skipped"
            )
            log(baseline_note)
    calib = None
    if args.int8:
        log(f"loading calibration images from {args.int8!r} ...")
        loader = calibration_loader(args.int8, size, batch_size=args.calib_batch_size,
                                    num_batches=args.calib_batches)
        calib = torch.cat([batch[0] for batch in loader])

    # ---- exports ----
    start = time.perf_counter()
    report: dict[str, Any] = {"source": str(args.model), "metadata": meta, "input_size": list(size),
                              "baseline_note": baseline_note}
    rows: list[tuple[str, str, str]] = []
    warnings_out: list[str] = []
    common = {"opset": args.opset, "dynamic_batch": args.dynamic_batch, "exporter": args.exporter,
              "tolerance": args.tolerance}
    keep = ("source", "timm_model", "alpha", "target", "macs_kept", "params_kept")
    try:
        log(f"exporting {paths['model']} (opset {args.opset}, {args.exporter} exporter) ...")
        onnx_model = export_onnx(model, paths["model"], size, **common,
                                 metadata={"variant": "pruned"} | {k: meta[k] for k in keep if meta.get(k)
                                                                   is not None})
        report["onnx"] = onnx_model.to_dict()
        rows.append((str(onnx_model.path), _size(onnx_model.size_bytes), str(onnx_model.parity)))
        if original is not None:
            log(f"exporting {paths['original']} (unpruned {meta['timm_model']}, random weights) ...")
            onnx_original = export_onnx(original, paths["original"], size, **common,
                                        metadata={"variant": "original", "timm_model": meta["timm_model"]})
            report["original"] = onnx_original.to_dict()
            rows.append((str(onnx_original.path), _size(onnx_original.size_bytes), str(onnx_original.parity)))
            report["macs_reduction"] = onnx_original.macs / onnx_model.macs
        if "ort" in formats:
            log(f"converting to ORT format for {args.target_platform} ...")
            ort_model = export_ort(onnx_model.path, out, target_platform=args.target_platform, reference=model,
                                   type_reduction=args.type_reduction, check_usability=not args.no_usability,
                                   tolerance=args.tolerance)
            report["ort"] = ort_model.to_dict()
            rows.append((str(ort_model.path), _size(ort_model.size_bytes), str(ort_model.parity)))
            rows.append((str(ort_model.config_path), "", "operators for a reduced ONNX Runtime Mobile build"))
        if calib is not None:
            log(f"quantizing to INT8 with {len(calib)} calibration images ...")
            int8 = quantize_int8(onnx_model.path, paths["int8"], calib,
                                 batch_size=args.calib_batch_size, num_batches=args.calib_batches,
                                 activation_type=args.activation_type,
                                 calibration_label=f"{len(calib)} images of {args.int8!r}")
            report["int8"] = int8.to_dict()
            agreement = "n/a" if int8.top1_agreement is None else f"{int8.top1_agreement:.1%}"
            rows.append((str(int8.path), _size(int8.size_bytes),
                         f"top-1 agreement with float {agreement} on {int8.images} calibration images "
                         f"({_classes(int8.float_classes)}; a proxy, not an accuracy); "
                         f"size {int8.size_ratio:.0%} of float"))
            if int8.top1_agreement is not None and int8.top1_agreement < INT8_AGREEMENT_THRESHOLD:
                warnings_out.append(
                    f"warning: INT8 top-1 agreement {int8.top1_agreement:.1%} is below the "
                    f"{INT8_AGREEMENT_THRESHOLD:.0%} measured on the test models; check the INT8 model on real "
                    "data (random-weight networks have small logit margins, to which this proxy is sensitive)"
                )
            if "ort" in formats:
                log("converting the INT8 model to ORT format ...")
                int8_ort = export_ort(int8.path, out, target_platform=args.target_platform,
                                      type_reduction=args.type_reduction, check_usability=False,
                                      tolerance=args.tolerance)
                report["int8_ort"] = int8_ort.to_dict()
                rows.append((str(int8_ort.path), _size(int8_ort.size_bytes), str(int8_ort.parity)))
                write_operator_config([ort_model.path, int8_ort.path], paths["ops"],
                                      type_reduction=args.type_reduction)
                report["operator_config"] = str(paths["ops"])
                rows.append((str(paths["ops"]), "", "operators for one reduced build running both .ort models"))
    except ParityError as err:
        print(f"pfgdf export: error: {err}", file=sys.stderr)
        return 1
    report["seconds"] = time.perf_counter() - start
    _io.write_text(paths["report"], json.dumps(report, indent=2, default=str) + "\n")

    width = max(len(r[0]) for r in rows)
    print(f"{'file':<{width}}  {'size':>9}  check")
    print("-" * (width + 60))
    for path, size_text, note in rows:
        print(f"{path:<{width}}  {size_text:>9}  {note}")
    if "macs_reduction" in report:
        print(f"MACs: original / pruned = {report['macs_reduction']:.2f}x (the most a dense model can gain)")
    if "ort" in report and report["ort"]["usability"]:
        print("mobile usability (onnxruntime's partitioning check):")
        for line in ort_model.usability_summary().splitlines():
            print(f"  {line}")
    for line in ([baseline_note] if baseline_note else []) + warnings_out:
        print(line)
    log(f"wrote {paths['report']}")
    return 0


def _check_runs(what: str, model: torch.nn.Module, size: tuple[int, ...]) -> None:
    with eval_mode(model), torch.no_grad():
        try:
            model(torch.randn(1, *size))
        except Exception as err:
            raise ValueError(f"--input-size {'x'.join(map(str, size))}: the {what} cannot run on it: {err}"
                             ) from err


def _classes(n: int | None) -> str:
    if n == 1:
        return "the float model predicts one class for all of them, so this agreement says nothing"
    return f"{n} distinct float top-1 classes"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
