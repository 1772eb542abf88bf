"""``pfgdf inspect``: load a saved pruned model, run it once, print what it is."""

from __future__ import annotations

import argparse

import torch
import torch_pruning as tp

from pfgdf_plugin.cli import _common
from pfgdf_plugin.models.saved import load_pruned_with_metadata


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="load a saved model, run one forward pass, print its size and MACs",
        description="Load a model file written by `pfgdf prune` / save_pruned, run it on a random input "
        "and print its metadata, output shape, parameters and MACs.",
    )
    p.add_argument("path", help="model file (.pt) written by pfgdf prune")
    p.add_argument("--input-size", type=_common.input_size, default=None,
                   help="input as SIZE, HxW or CxHxW (default: the size saved with the model)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, meta = load_pruned_with_metadata(args.path)
    size = args.input_size or tuple(meta.get("input_size", (3, 224, 224)))
    x = torch.randn(1, *size)
    model.eval()
    with torch.no_grad():
        out = model(x)
    macs, params = tp.utils.count_ops_and_params(model, x)
    for key, value in meta.items():
        print(f"{key:>12}: {value}")
    print(f"{'input':>12}: {tuple(x.shape)}")
    print(f"{'output':>12}: {tuple(out.shape)}")
    print(f"{'params':>12}: {params:,}")
    print(f"{'MACs':>12}: {macs:,.0f}")
    return 0
