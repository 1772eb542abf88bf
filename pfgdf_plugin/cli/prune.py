"""``pfgdf prune``: prune a timm model (random weights, or a saved model) and save it with a report."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pfgdf_plugin.cli import _common
from pfgdf_plugin.cli._names import BUILTIN_DATA as BUILTIN
from pfgdf_plugin.cli._names import STATISTICS

if TYPE_CHECKING:
    import torch

    from pfgdf_plugin.pruning.result import PruneResult

# Below this share of the MACs, an --alpha run gets a warning: most channels are gone, accuracy rarely comes back.
LOW_KEEP = 0.25


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
    _model_options(p.add_argument_group("model"))
    _target_options(p.add_argument_group("how much to prune"))
    _criterion_options(p.add_argument_group("criterion"))
    _plan_options(p.add_argument_group("plan"))
    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, help="where to save the pruned model (.pt, written atomically)")
    out.add_argument("--report", default=None, help="also write the report as JSON to this path")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr (warnings still show)")
    _common.add_threads(out, "building the graph, CHIP calibration and pruning")
    p.set_defaults(run=run)


def _model_options(g: argparse._ArgumentGroup) -> None:
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="timm model name, e.g. resnet18 (created with pretrained=False)")
    src.add_argument("--checkpoint", help="a model file written by pfgdf prune / save_pruned, to prune further")
    g.add_argument("--trust-pickle", action="store_true",
                   help="let --checkpoint be a pickled file (pfgdf-plugin 0.1); unpickling runs any code it holds")
    g.add_argument("--num-classes", type=_common.positive_int("--num-classes"), default=None,
                   help="classifier outputs (default: timm's)")
    g.add_argument("--in-chans", type=_common.positive_int("--in-chans", 4096), default=None,
                   help="input channels (default: timm's, 3)")
    g.add_argument("--input-size", type=_common.input_size("--input-size"), default=None,
                   help="example input as SIZE, HxW or CxHxW (default: the model's timm config, else 224)")
    g.add_argument("--seed", type=_common.integer("--seed", 0), default=0,
                   help="seed of the random weights (with --model), the example input and the calibration "
                   "sample (default: 0)")


def _target_options(g: argparse._ArgumentGroup) -> None:
    how = g.add_mutually_exclusive_group(required=True)
    how.add_argument("--alpha", type=_common.positive("--alpha"),
                     help="prune channels scoring below ALPHA in every group; how much that removes depends on the "
                     "model (1.0 keeps under 10%% of resnet18's MACs), so a warning follows when it keeps under "
                     f"{LOW_KEEP * 100:.0f}%% of the MACs; --target-macs asks for a budget instead")
    how.add_argument("--target-macs", type=_common.fraction("--target-macs"),
                     help="fraction of MACs to keep, e.g. 0.5")
    how.add_argument("--target-params", type=_common.fraction("--target-params"),
                     help="fraction of parameters to keep")


def _criterion_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--method", choices=("pfgdf", "chip"), default="pfgdf", help="criterion (default: pfgdf)")
    g.add_argument("--statistic", choices=STATISTICS, default="l1", help="PFGDF's per-filter statistic (default: l1)")
    g.add_argument("--calib-data", default=None,
                   help=f"CHIP's calibration images: a built-in set ({', '.join(BUILTIN)}), an ImageFolder "
                   "directory or a .pt file of images (required with --method chip)")
    g.add_argument("--calib-batches", type=_common.positive_int("--calib-batches"), default=5,
                   help="CHIP calibration batches (default: 5)")
    g.add_argument("--calib-batch-size", type=_common.positive_int("--calib-batch-size"), default=32,
                   help="CHIP calibration batch size (default: 32)")


def _plan_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--round-to", type=_common.round_to("--round-to"), default=None,
                   help="keep channel counts at multiples of N; 'auto' picks the multiple that keeps convs on ONNX "
                   "Runtime's fast CPU path here (16 with AVX-512, else 8). Default: exact counts")
    g.add_argument("--min-channels", type=_common.positive_int("--min-channels"), default=1,
                   help="channels every group keeps (default: 1)")
    g.add_argument("--ignore", nargs="+", default=[], metavar="LAYER",
                   help="module names (as in model.named_modules()) whose output channels are never pruned")
    g.add_argument("--graph-timeout", type=_common.positive("--graph-timeout"), default=120.0,
                   help="seconds Torch-Pruning may spend on the dependency graph before pfgdf gives up with an "
                   "error; one group whose search takes over 1/120 of it (at least 0.5 s) is left alone and "
                   "reported (default: 120)")


def _importance(args: argparse.Namespace, model: torch.nn.Module, size: tuple[int, int, int]) -> object:
    from pfgdf_plugin.criteria import CHIPImportance, PFGDFImportance
    from pfgdf_plugin.criteria.registry import calibrate
    from pfgdf_plugin.data import calibration_loader

    if args.method != "chip":
        return PFGDFImportance(statistic=args.statistic)
    importance = CHIPImportance()
    loader = calibration_loader(
        args.calib_data, size, batch_size=args.calib_batch_size, num_batches=args.calib_batches, seed=args.seed
    )
    calibrate(
        [importance], model, loader, progress=not args.quiet, description=f"calibrating CHIP on {args.calib_data}"
    )
    return importance


def _check(args: argparse.Namespace) -> None:
    from pfgdf_plugin._util import validate

    if args.method == "chip" and not args.calib_data:
        raise ValueError(
            f"--method chip needs --calib-data: a built-in set ({', '.join(BUILTIN)}), an ImageFolder "
            "directory or a .pt file of images"
        )
    if args.method != "chip" and args.calib_data:
        raise ValueError("--calib-data is only used by --method chip")
    validate.output_path("--output", args.output)
    if args.report is not None:
        validate.output_path("--report", args.report)
    validate.distinct([args.checkpoint], [args.output, args.report])


def _load(args: argparse.Namespace, log: object) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The model to prune (built from timm or loaded) and the example input size."""
    from pfgdf_plugin.models.saved import load_pruned
    from pfgdf_plugin.models.timm import create_model, default_input_size

    if args.checkpoint:
        log(f"loading {args.checkpoint} ...")
        model = load_pruned(args.checkpoint, trust_pickle=args.trust_pickle)
    else:
        log(f"building {args.model} (random weights, seed {args.seed}) ...")
        model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    size = args.input_size or default_input_size(model)
    if args.in_chans and args.input_size is None:
        size = (args.in_chans, *size[1:])
    return model, tuple(size)


def low_keep_warning(args: argparse.Namespace, result: PruneResult) -> str | None:
    """The warning for an ``--alpha`` that kept under `LOW_KEEP` of the MACs, else ``None``.

    Examples:
        >>> from types import SimpleNamespace
        >>> args = SimpleNamespace(alpha=1.0)
        >>> low_keep_warning(args, SimpleNamespace(macs_kept=0.094, params_kept=0.05))[:70]
        'pfgdf prune: warning: --alpha 1 kept only 9.4% of the MACs and 5.0% of'
        >>> low_keep_warning(args, SimpleNamespace(macs_kept=0.5, params_kept=0.4)) is None
        True
    """
    if args.alpha is None or result.macs_kept >= LOW_KEEP:
        return None
    return (f"pfgdf prune: warning: --alpha {args.alpha:g} kept only {result.macs_kept:.1%} of the MACs and "
            f"{result.params_kept:.1%} of the parameters: most channels are gone, and accuracy rarely recovers from "
            "that. To prune to a budget, give --target-macs (e.g. 0.5) or --target-params instead of --alpha.")


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util.io import output_lock

    _check(args)
    # One writer per output: a second `pfgdf prune` to the same file fails at once instead of pairing its model
    # with the other run's report.
    with output_lock(args.output):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from pfgdf_plugin._util import validate
    from pfgdf_plugin._util.threads import set_threads
    from pfgdf_plugin.models.meta import ModelMeta
    from pfgdf_plugin.models.saved import save_pruned
    from pfgdf_plugin.pruning.api import prune

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    log = (lambda *_a, **_k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    model, size = _load(args, log)
    modules = dict(model.named_modules())
    for name in args.ignore:
        if name not in modules or not name:
            hint = validate.suggest(name, [n for n in modules if n], 3)
            raise ValueError(f"--ignore: the model has no module {name!r}.{hint}".rstrip("."))
    importance = _importance(args, model, size)
    log(f"pruning {args.model or args.checkpoint} on input {size} ...")
    result = prune(
        model,
        torch.randn(1, *size, generator=torch.Generator().manual_seed(args.seed)),
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
    report = result.to_dict()
    meta = ModelMeta(
        source=args.model or args.checkpoint,
        timm_model=args.model,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        input_size=size,
        method=args.method,
        alpha=report["alpha"],
        target=report["target"],
        macs_kept=report["macs_kept"],
        params_kept=report["params_kept"],
    )
    save_pruned(result.model, args.output, metadata=meta)
    if args.report:
        result.to_json(args.report)
    print(result.table())
    log(f"saved {args.output}" + (f" and {args.report}" if args.report else ""))
    warning = low_keep_warning(args, result)
    if warning:
        print(warning, file=sys.stderr)
    return 0
