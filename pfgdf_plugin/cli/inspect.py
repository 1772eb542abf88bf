"""``pfgdf inspect``: load a saved pruned model, run it once, print what it is."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pfgdf_plugin.cli import _common

if TYPE_CHECKING:
    from pfgdf_plugin.models.meta import ModelMeta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="load a saved model, run one forward pass, print its size and MACs",
        description="Load a model file written by `pfgdf prune` / save_pruned (without unpickling anything), run "
        "it on a random input and print its metadata, output shape, parameters and MACs.",
    )
    p.add_argument("path", help="model file (.pt) written by pfgdf prune")
    p.add_argument("--input-size", type=_common.input_size("--input-size"), default=None,
                   help="input as SIZE, HxW or CxHxW (default: the size saved with the model, else 224)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also load pickled files (pfgdf-plugin 0.1); unpickling runs any code the file holds")
    p.set_defaults(run=run)


def _shown(key: str, value: Any) -> str:
    if key.endswith("_kept") and isinstance(value, float):
        return f"{value:.1%}"
    if key == "alpha" and isinstance(value, float):
        return f"{value:.4g}"
    if key == "target" and isinstance(value, dict) and {"kind", "keep"} <= set(value):
        return f"keep {value['keep']:.1%} of {value['kind']}"
    if isinstance(value, list):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)


def metadata_lines(meta: ModelMeta) -> list[str]:
    """The metadata that is set, one ``key: value`` line each, values formatted for reading.

    Examples:
        >>> from pfgdf_plugin.models.meta import ModelMeta
        >>> metadata_lines(ModelMeta(timm_model="resnet18", macs_kept=0.0939626155070069, input_size=(3, 64, 64)))
        ['  timm_model: resnet18', '  input_size: 3x64x64', '   macs_kept: 9.4%']
    """
    return [f"{key:>12}: {_shown(key, value)}" for key, value in meta.to_dict().items() if value is not None]


def run(args: argparse.Namespace) -> int:
    import torch
    import torch_pruning as tp

    from pfgdf_plugin._util.modes import eval_mode
    from pfgdf_plugin._util.units import si
    from pfgdf_plugin.models.saved import load_pruned_with_metadata

    model, meta = load_pruned_with_metadata(args.path, trust_pickle=args.trust_pickle)
    size = args.input_size or meta.input_size or (3, 224, 224)
    x = torch.randn(1, *size)
    with eval_mode(model), torch.no_grad():
        out = model(x)
    macs, params = tp.utils.count_ops_and_params(model, x)
    print("\n".join(metadata_lines(meta)))
    print(f"{'input':>12}: {tuple(x.shape)}")
    print(f"{'output':>12}: {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    print(f"{'params':>12}: {params:,} ({si(params)})")
    print(f"{'MACs':>12}: {macs:,.0f} ({si(macs)})")
    return 0
