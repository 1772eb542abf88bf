"""The operators of a model that pruning resizes, at their real input shapes: what a latency table measures.

One forward pass on the example inputs records the input shape of every 2-D conv and linear layer, and of every
fused attention block (`pfgdf_plugin.pruning.attention.find_heads`). Each becomes an `OperatorSite`: the
operator's signature (`pfgdf_plugin.measure.probe_graphs`) and, per axis of the table, which layer's channels
set it, so a plan's kept channel counts give the operator's latency. Everything else (activations, norms
folded or not, pooling, reshapes) is the model's constant part.

Examples:
    >>> import timm, torch
    >>> model = timm.create_model("resnet18", num_classes=10)
    >>> sites = operator_sites(model, torch.randn(1, 3, 32, 32))
    >>> len(sites), sites[0].signature["op"], sites[0].signature["hw"], sites[-1].signature["op"]
    (21, 'conv', [32, 32], 'linear')
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from pfgdf_plugin.measure.table import signature_id
from pfgdf_plugin.models.inputs import run_model
from pfgdf_plugin.models.layers import is_depthwise


@dataclass
class OperatorSite:
    """One operator: its signature and id, and per table axis ``(layer, direction, divisor)``: the axis's channel
    count is the layer's channel count along ``direction`` divided by ``divisor``."""

    signature: dict[str, Any]
    axes: dict[str, tuple[nn.Module, str, int]] = field(default_factory=dict)
    name: str = ""

    @property
    def id(self) -> str:
        return signature_id(self.signature)


def _pair(v: object) -> list[int]:
    return [int(x) for x in v] if isinstance(v, tuple | list) else [int(v), int(v)]  # type: ignore[call-overload]


def _conv_signature(m: nn.Conv2d, shape: torch.Size) -> dict[str, Any] | None:
    if not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
        return None  # "same"/"valid" strings and reflective padding: exported differently, left to the constant
    ph, pw = _pair(m.padding)
    return {"op": "conv", "batch": int(shape[0]), "in": m.in_channels, "out": m.out_channels,
            "hw": [int(shape[2]), int(shape[3])], "kernel": _pair(m.kernel_size), "stride": _pair(m.stride),
            "pads": [ph, pw, ph, pw], "dilation": _pair(m.dilation), "groups": m.groups,
            "depthwise": is_depthwise(m)}


def operator_sites(model: nn.Module, example_inputs: torch.Tensor | tuple | list | dict) -> list[OperatorSite]:
    """Every conv, linear and attention operator the example inputs run through, in execution order.

    A layer run more than once (a shared block) counts once per call. The model is run once, in eval mode,
    without gradients; nothing is modified.
    """
    from pfgdf_plugin.pruning.attention import find_heads  # pruning imports allocation, which imports this module

    heads = find_heads(model)
    names = {m: n for n, m in model.named_modules()}
    sites: list[OperatorSite] = []

    def on_layer(m: nn.Module, inputs: tuple, _out: object) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor):
            return
        if isinstance(m, nn.Conv2d) and x.dim() == 4:
            sig = _conv_signature(m, x.shape)
            if sig is not None:
                axes = {"out": (m, "out", 1)} if sig["depthwise"] else {"in": (m, "in", 1), "out": (m, "out", 1)}
                sites.append(OperatorSite(sig, axes, names.get(m, "")))
        elif isinstance(m, nn.Linear):
            sig = {"op": "linear", "tokens": [int(d) for d in x.shape[:-1]], "in": m.in_features,
                   "out": m.out_features}
            sites.append(OperatorSite(sig, {"in": (m, "in", 1), "out": (m, "out", 1)}, names.get(m, "")))
        if m in heads and heads[m].parts > 1 and isinstance(m, nn.Linear) and x.dim() >= 3:  # not a lone v
            layout = heads[m]
            sig = {"op": "attention", "batch": math.prod(int(d) for d in x.shape[:-2]), "tokens": int(x.shape[-2]),
                   "heads": layout.num_heads, "head_dim": layout.head_dim, "unit": layout.unit}
            sites.append(OperatorSite(sig, {"width": (m, "out", layout.parts)}, names.get(layout.block, "")))

    hooked = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [m.register_forward_hook(on_layer) for m in hooked]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_model(model, example_inputs)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return sites


def model_id(model: nn.Module, sites: list[OperatorSite]) -> str:
    """A stable name for an unpruned model at one input shape: its class, parameter count and operators."""
    text = json.dumps([type(model).__qualname__, sum(p.numel() for p in model.parameters()),
                       [s.id for s in sites]])
    return f"model-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
