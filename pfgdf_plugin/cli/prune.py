"""``pfgdf prune``: prune a timm model (random weights, or a saved model) and save it with a report."""

from __future__ import annotations

import argparse
import difflib
import sys

import torch

from pfgdf_plugin.cli import _common
from pfgdf_plugin.criteria import STATISTICS, CHIPImportance, PFGDFImportance
from pfgdf_plugin.data import BUILTIN, calibration_loader
from pfgdf_plugin.models.saved import load_pruned, save_pruned
from pfgdf_plugin.models.timm import create_model, default_input_size
from pfgdf_plugin.pruning.api import prune


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model with one threshold (alpha) or to a MACs/params target (PFGDF or CHIP)",
        description="Prune a timm model (random weights unless --checkpoint is given): every dependency group "
        "loses the channels whose score is below one threshold alpha. --method pfgdf (default) scores a "
        "filter by its Gaussian distribution feature z = |s - mu| / sigma; --method chip by its channel "
        "independence on --calib-data images (normalised per layer). With --target-macs/--target-params, "
        "alpha is searched by bisection. Prints a per-group table on stdout, progress on stderr.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="timm model name, e.g. resnet18 (created with pretrained=False)")
    src.add_argument("--checkpoint", help="a model file written by pfgdf prune / save_pruned, to prune further")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: timm's)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default: timm's, 3)")
    p.add_argument(
        "--input-size",
        type=_common.input_size,
        default=None,
        help="example input as SIZE, HxW or CxHxW (default: the model's timm config, else 224)",
    )
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--alpha", type=_common.positive, help="prune channels scoring below ALPHA in every group")
    how.add_argument("--target-macs", type=_common.fraction, help="fraction of MACs to keep, e.g. 0.5")
    how.add_argument("--target-params", type=_common.fraction, help="fraction of parameters to keep")
    p.add_argument("--method", choices=("pfgdf", "chip"), default="pfgdf", help="criterion (default: pfgdf)")
    p.add_argument(
        "--statistic", choices=STATISTICS, default="l1", help="PFGDF's per-filter statistic (default: l1)"
    )
    p.add_argument(
        "--calib-data",
        default=None,
        help=f"CHIP's calibration images: a built-in set ({', '.join(BUILTIN)}), an ImageFolder directory or a "
        ".pt file of images (required with --method chip)",
    )
    p.add_argument(
        "--calib-batches", type=_common.positive_int, default=5, help="CHIP calibration batches (default: 5)"
    )
    p.add_argument(
        "--calib-batch-size", type=_common.positive_int, default=32, help="CHIP calibration batch size (default: 32)"
    )
    p.add_argument(
        "--round-to",
        type=_common.round_to,
        default=None,
        help="keep channel counts at multiples of N; 'auto' picks the multiple that keeps convs on ONNX "
        "Runtime's fast CPU path here (16 with AVX-512, else 8). Default: exact counts",
    )
    p.add_argument(
        "--min-channels", type=_common.positive_int, default=1, help="channels every group keeps (default: 1)"
    )
    p.add_argument(
        "--ignore", nargs="+", default=[], metavar="LAYER",
        help="module names (as in model.named_modules()) whose output channels are never pruned",
    )
    p.add_argument(
        "--graph-timeout", type=_common.positive, default=120.0,
        help="seconds Torch-Pruning may spend on the dependency graph before pfgdf gives up with an error; one "
        "group whose search takes over 1/120 of it (at least 0.5 s) is left alone and reported (default: 120)",
    )
    p.add_argument("--output", required=True, help="where to save the pruned model (.pt, written atomically)")
    p.add_argument("--report", default=None, help="also write the report as JSON to this path")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.method == "chip" and not args.calib_data:
        raise ValueError(
            f"--method chip needs --calib-data: a built-in set ({', '.join(BUILTIN)}), an ImageFolder "
            "directory or a .pt file of images"
        )
    if args.method != "chip" and args.calib_data:
        raise ValueError("--calib-data is only used by --method chip")
    _common.distinct_outputs([args.checkpoint], [args.output, args.report])
    if args.checkpoint:
        model = load_pruned(args.checkpoint)
    else:
        model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    size = args.input_size or default_input_size(model)
    if args.in_chans and args.input_size is None:
        size = (args.in_chans, *size[1:])
    log = (lambda *_a, **_k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if args.method == "chip":
        importance = CHIPImportance()
        loader = calibration_loader(
            args.calib_data, tuple(size), batch_size=args.calib_batch_size, num_batches=args.calib_batches
        )
        log(f"calibrating CHIP on {args.calib_data} ({args.calib_batches} x {args.calib_batch_size} images) ...")
        with importance.calibrate(model):
            for images, _ in loader:
                model(images)
    else:
        importance = PFGDFImportance(statistic=args.statistic)
    modules = dict(model.named_modules())
    for name in args.ignore:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            raise ValueError(f"--ignore: the model has no module {name!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))
    log(f"pruning {args.model or args.checkpoint} on input {tuple(size)} ...")
    result = prune(
        model,
        torch.randn(1, *size),
        alpha=args.alpha,
        target_macs=args.target_macs,
        target_params=args.target_params,
        importance=importance,
        round_to=args.round_to,
        min_channels=args.min_channels,
        ignored_layers=[modules[n] for n in args.ignore],
        graph_timeout=args.graph_timeout,
        progress=not args.quiet,
    )
    # Enough to rebuild the unpruned architecture later (export and bench compare against it).
    metadata = {
        "source": args.model or args.checkpoint,
        "timm_model": args.model,
        "num_classes": args.num_classes,
        "in_chans": args.in_chans,
        "input_size": list(size),
        "method": args.method,
    } | {k: v for k, v in result.to_dict().items() if k in ("alpha", "target", "macs_kept", "params_kept")}
    save_pruned(result.model, args.output, metadata=metadata)
    if args.report:
        result.to_json(args.report)
    print(result.table())
    log(f"saved {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
