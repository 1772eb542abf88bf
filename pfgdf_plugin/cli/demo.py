"""``pfgdf demo``: the whole pipeline on a built-in default, on real data, with no downloads.

Trains timm's ``resnet10t`` (1 input channel) on scikit-learn's digits, prunes it with PFGDF's automated
search to a MACs target, recalibrates BatchNorm, fine-tunes, exports both models to ONNX (checked against
PyTorch), measures their latency on ONNX Runtime at 1 thread, and reports accuracy, parameters, MACs and
latency before and after, in a report folder (JSON, Markdown, a latency plot, the models). The job is
`pfgdf_plugin.recipes.run_job` with a recipe built from the flags; ``pfgdf run`` reads one from YAML.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pfgdf_plugin.cli import _common

if TYPE_CHECKING:
    from pfgdf_plugin.recipes import Recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small timm CNN on real digits, prune it with PFGDF, recover, export, time, report",
        description="The main job on a built-in default: train timm's resnet10t on scikit-learn's digits "
        "(real images, bundled with scikit-learn), prune it with PFGDF's automated search to --target-macs, "
        "recalibrate BatchNorm, fine-tune, export original and pruned models to ONNX (checked against "
        "PyTorch), time both on ONNX Runtime at 1 thread, and write a report folder (report.json, report.md, "
        "latency.png, the .pt and .onnx models). Everything runs on the CPU; the default took 35 s on 2 cores "
        "busy with other jobs (at --threads 1).",
    )
    p.add_argument("--output-dir", default="demo-out", help="report folder (default: demo-out)")
    p.add_argument("--model", default="resnet10t", help="timm model to train (default: resnet10t)")
    p.add_argument("--data", default="digits", help="built-in dataset (digits, mnist) or an ImageFolder dir")
    p.add_argument(
        "--input-size",
        type=_common.input_size("--input-size"),
        default=(1, 16, 16),
        help="model input as SIZE, HxW or CxHxW (default: 1x16x16)",
    )
    p.add_argument(
        "--target-macs", type=_common.fraction("--target-macs"), default=0.5, help="fraction of MACs to keep (0.5)"
    )
    p.add_argument(
        "--epochs", type=_common.positive_int("--epochs"), default=6, help="training epochs of the unpruned model (6)"
    )
    p.add_argument(
        "--finetune-epochs",
        type=_common.positive_int("--finetune-epochs"),
        default=3,
        help="fine-tuning epochs after pruning (3)",
    )
    p.add_argument("--seed", type=_common.integer("--seed", 0), default=0,
                   help="seed for data order and initialisation (0)")
    p.add_argument(
        "--round-to",
        type=_common.round_to("--round-to"),
        default="auto",
        help="keep channel counts at multiples of N, or 'auto' (default): the multiple that keeps convs "
        "on ONNX Runtime's fast CPU path here (16 with AVX-512, else 8)",
    )
    p.add_argument(
        "--latency-runs",
        type=_common.positive_int("--latency-runs"),
        default=50,
        help="timed ONNX Runtime runs per model (50)",
    )
    _common.add_threads(p, "training, pruning, fine-tuning and exporting (latency is measured at 1 thread)")
    p.set_defaults(run=run)


def recipe(args: argparse.Namespace) -> Recipe:
    """The demo's job as a recipe (``pfgdf run`` runs the same job from a YAML file)."""
    from pfgdf_plugin.recipes import Recipe
    from pfgdf_plugin.recipes.sections import BenchmarkSpec, DataSpec, ModelSpec, PruneSpec, RecoverSpec, TrainSpec

    return Recipe(
        name="pfgdf demo",
        model=ModelSpec(name=args.model),
        data=DataSpec(source=args.data),
        input_size=args.input_size,
        train=TrainSpec(epochs=args.epochs, lr=0.05),
        prune=PruneSpec(target_macs=args.target_macs, round_to=args.round_to),
        recover=RecoverSpec(recalibrate_batches=20, finetune_epochs=args.finetune_epochs, lr=0.02),
        benchmark=BenchmarkSpec(threads=(1,), runs=args.latency_runs),
        output_dir=args.output_dir,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util.threads import set_threads
    from pfgdf_plugin.recipes import execute_job

    set_threads(args.threads)
    print(execute_job(recipe(args), progress=True).text())
    return 0
