"""``pfgdf export``: a saved pruned model to ONNX (and the unpruned anchor), ORT format, INT8; every file verified."""

from __future__ import annotations

import argparse
import sys

from pfgdf_plugin.cli import _common
from pfgdf_plugin.cli._names import ACTIVATION_TYPES, DEFAULT_OPSET, EXPORTERS, PARITY_TOLERANCE, TARGET_PLATFORMS
from pfgdf_plugin.cli._names import BUILTIN_DATA as BUILTIN
from pfgdf_plugin.cli._names import EXPORT_FORMATS as FORMATS

# How errors of export_bundle name its arguments: as the flags the user typed.
FLAGS = {"output_dir": "--output-dir", "formats": "--format", "calibration": "--int8",
         "calib_batches": "--calib-batches", "calib_batch_size": "--calib-batch-size",
         "activation_type": "--activation-type", "input_size": "--input-size"}


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
    p.add_argument("--calib-batches", type=_common.positive_int("--calib-batches"), default=5,
                   help="calibration batches (default: 5)")
    p.add_argument("--calib-batch-size", type=_common.positive_int("--calib-batch-size"), default=32,
                   help="images per calibration batch (default: 32)")
    p.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="uint8",
                   help="INT8 activation type (default: uint8, which ONNX Runtime fuses into integer kernels on "
                   "any CPU; int8 activations ran 2.7x slower on x86 for resnet18)")
    p.add_argument("--input-size", type=_common.input_size("--input-size"), default=None,
                   help="input as SIZE, HxW or CxHxW (default: the size saved with the model)")
    p.add_argument("--opset", type=_common.positive_int("--opset"), default=DEFAULT_OPSET,
                   help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export-based, default) or the legacy torchscript")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="symbolic batch dimension (default: batch fixed to 1, which NNAPI / CoreML prefer)")
    p.add_argument("--target-platform", choices=TARGET_PLATFORMS, default="arm",
                   help="platform the ORT-format optimizations are fixed for (default: arm)")
    p.add_argument("--type-reduction", action="store_true",
                   help="ORT config also lists the types each operator needs (a smaller reduced build)")
    p.add_argument("--tolerance", type=_common.positive("--tolerance"), default=PARITY_TOLERANCE,
                   help=f"largest accepted max abs error / max abs output (default: {PARITY_TOLERANCE:g})")
    p.add_argument("--no-baseline", action="store_true", help="do not write original.onnx")
    p.add_argument("--no-usability", action="store_true", help="skip the NNAPI / CoreML usability check")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let MODEL be a pickled file (pfgdf-plugin 0.1); unpickling runs any code it holds")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin.deploy.bundle import BundleConfig, export_bundle
    from pfgdf_plugin.deploy.report import bundle_table

    config = BundleConfig(
        formats=tuple(dict.fromkeys(args.formats or ["onnx"])),
        calibration=args.int8,
        calib_batches=args.calib_batches,
        calib_batch_size=args.calib_batch_size,
        activation_type=args.activation_type,
        input_size=args.input_size,
        opset=args.opset,
        exporter=args.exporter,
        dynamic_batch=args.dynamic_batch,
        target_platform=args.target_platform,
        type_reduction=args.type_reduction,
        tolerance=args.tolerance,
        baseline=not args.no_baseline,
        usability=not args.no_usability,
        trust_pickle=args.trust_pickle,
    )
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    # A failed parity check (ParityError) ends like every other error: `pfgdf export: error: ...`, status 2.
    result = export_bundle(args.model, args.output_dir, config, log=log, names=FLAGS)
    print(bundle_table(result))
    return 0
