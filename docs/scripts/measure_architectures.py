"""Which timm families `prune(model, x, target_macs=0.5)` handles: one row per model, measured, never assumed.

For each model (random weights, `num_classes=10`, one 3xSIZExSIZE input): prune to half the MACs, run the pruned
model, check the output shape is unchanged, and record the measured MACs/params kept, the search steps and the
wall time. Each model runs in its own subprocess with a time limit, so one failure (or hang) cannot hide the
others. Prints a Markdown table and writes JSON.

    python docs/scripts/measure_architectures.py --output bench-out/architectures.json
    python docs/scripts/measure_architectures.py --models resnet18 vgg11_bn --size 64

A name ending in ``+ignore-attn`` (e.g. ``deit_tiny_patch16_224+ignore-attn``) prunes that model with every
attention block (modules named ``*.attn``) passed in ``ignored_layers``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_MODELS = (
    "resnet18",
    "vgg11_bn",
    "mobilenetv3_small_050",
    "convnext_atto",
    "mobilenetv2_050",
    "efficientnet_b0",
    "mnasnet_050",
    "lcnet_050",
    "regnetx_002",
    "regnety_002",
    "resnext26ts",
    "repvgg_a0",
    "densenet121",
    "ghostnet_050",
    "rexnet_100",
    "edgenext_xx_small",
    "mobilevit_xxs",
    "poolformer_s12",
    "deit_tiny_patch16_224",
    "deit_tiny_patch16_224+ignore-attn",
)
# Transformers with a fixed position embedding are built for the input size (timm's img_size argument).
_NEEDS_IMG_SIZE = ("deit_", "vit_")
# NAME+ignore-attn: the same model with every attention block (modules named *.attn) in ignored_layers.
_IGNORE_ATTN = "+ignore-attn"


def measure_one(name: str, size: int) -> dict:
    """Prune one model to half its MACs and check the pruned model runs; every failure is caught and recorded."""
    import timm
    import torch

    from pfgdf_plugin import prune

    torch.manual_seed(0)
    torch.set_num_threads(1)
    base = name.removesuffix(_IGNORE_ATTN)
    kwargs = {"img_size": size} if base.startswith(_NEEDS_IMG_SIZE) else {}
    row: dict = {"model": name, "input": [3, size, size]}
    try:
        model = timm.create_model(base, pretrained=False, num_classes=10, **kwargs).eval()
        ignored = [m for n, m in model.named_modules() if n.endswith(".attn")] if name != base else []
        x = torch.randn(1, 3, size, size)
        start = time.perf_counter()
        result = prune(model, x, target_macs=0.5, ignored_layers=ignored)
        row["seconds"] = round(time.perf_counter() - start, 2)
        with torch.no_grad():
            out = result.model.eval()(x)
        row |= {
            "ok": tuple(out.shape) == (1, 10),
            "output_shape": list(out.shape),
            "macs_kept": round(result.macs_kept, 4),
            "params_kept": round(result.params_kept, 4),
            "target_met": result.extra.get("target_met"),
            "search_steps": result.search_steps,
            "corrections": result.extra.get("corrections"),
            "groups": len(result.groups),
            "ignored_layers": len(ignored),
        }
    except Exception as err:  # recorded, not raised: the table shows what fails and how
        row |= {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:400]}"}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--size", type=int, default=64, help="input height and width (default: 64)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model (default: 300)")
    ap.add_argument("--output", default="bench-out/architectures.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print its row as JSON
    args = ap.parse_args()

    if args.one:
        print(json.dumps(measure_one(args.one, args.size)))
        return

    import timm
    import torch
    import torch_pruning as tp

    import pfgdf_plugin

    rows = []
    for name in args.models:
        print(f"{name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=os.environ.copy())
            lines = done.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "model": name, "ok": False, "error": f"exit {done.returncode}: {done.stderr.strip()[-200:]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "ok": False, "error": f"timed out after {args.timeout} s"}
        rows.append(row)

    env = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_pruning": tp.__version__,
        "pfgdf_plugin": pfgdf_plugin.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads_per_model": 1,
    }
    print("| model | result | MACs kept | params kept | search steps | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "macs_kept" in r:
            status = "ok" if r["ok"] else f"wrong output shape {r['output_shape']}"
            print(f"| `{r['model']}` | {status} | {r['macs_kept']:.1%} | {r['params_kept']:.1%} | "
                  f"{r['search_steps']} | {r['seconds']:.1f} |")
        else:
            print(f"| `{r['model']}` | fails: `{r['error']}` | | | | |")
    print(f"\n{', '.join(f'{k} {v}' for k, v in env.items())}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"env": env, "size": args.size, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
