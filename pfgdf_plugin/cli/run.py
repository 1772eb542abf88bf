"""``pfgdf run``: the demo's whole pipeline on your own model and data, described by a YAML recipe."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pfgdf_plugin.cli import _common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="the demo's pipeline (train or load, prune, recover, export, time, report) from a YAML recipe",
        description="Run the job of `pfgdf demo` on your own model and data, as a YAML recipe describes it: "
        "model (a timm name or a pfgdf_plugin.models.zoo name such as cifar_resnet56, with kwargs for timm, and "
        "optionally a checkpoint to start from), data (digits, mnist, an ImageFolder directory or a .pt file), "
        "input_size, train, prune (pfgdf or chip, target_macs / target_params / alpha, round_to), recover "
        "(BatchNorm recalibration, fine-tuning, distillation), export (onnx, ort, int8), benchmark (threads, "
        "runs), output_dir and seed. The recipe is checked completely before any work starts; errors name the "
        "key. Writes the report folder of pfgdf demo (report.json, report.md, latency.png, the models). "
        "Tables on stdout, progress on stderr. Examples: examples/recipes/.",
    )
    p.add_argument("--config", required=True, metavar="RECIPE", help="the recipe file (YAML)")
    p.add_argument("--output-dir", default=None, help="report folder (overrides the recipe's output_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one recipe value, read as YAML, e.g. --set train.epochs=1 --set "
                   "prune.target_macs=0.4 --set benchmark.threads=[1,4]; repeat for several")
    p.add_argument("--dry-run", action="store_true",
                   help="check the recipe, its files and that its model can be built (model.kwargs included), "
                   "print it with every default filled in, and stop")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _common.add_threads(p, "training, pruning, fine-tuning and exporting (benchmark.threads sets what latency is "
                        "measured at)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pfgdf_plugin._util.threads import set_threads
    from pfgdf_plugin.recipes import Recipe, execute_job

    recipe = Recipe.from_yaml(args.config, args.overrides)
    if args.output_dir is not None:
        recipe = dataclasses.replace(recipe, output_dir=args.output_dir)
    set_threads(args.threads)
    if args.dry_run:
        recipe.check_files()
        recipe.check_model()
        print(recipe.to_yaml(), end="")
        if not args.quiet:
            print(f"recipe {args.config!r} is valid; nothing was run", file=sys.stderr)
        return 0
    print(execute_job(recipe, progress=not args.quiet).text())
    return 0
