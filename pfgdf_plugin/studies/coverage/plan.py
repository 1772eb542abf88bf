"""Criterion 4: a `PruneResult`'s plan agrees with its pruned model (channels, tensors, MACs, parameters)."""

from __future__ import annotations

import math
from typing import Any

from pfgdf_plugin.studies.coverage.protocol import first_line


def plan_problems(result: Any, example_inputs: Any) -> list[str]:
    """What is inconsistent between a `pfgdf_plugin.pruning.api.PruneResult` and its pruned model.

    Checked: every group keeps between 1 and all of its channels; every reported layer exists in the pruned
    model with the reported channel counts, none grew, none fell to 0; every conv, linear and norm layer's
    tensors match its declared channel counts; layers prune() left alone (``result.ignored``) kept their output
    channels; MACs and parameters re-counted on the pruned model equal the reported ones.

    Args:
        result: what `prune` returned.
        example_inputs: the input the MACs were counted on.

    Returns:
        One line per problem; empty when consistent.

    Examples:
        >>> import timm, torch
        >>> from pfgdf_plugin import prune
        >>> x = torch.randn(1, 3, 64, 64)
        >>> plan_problems(prune(timm.create_model("resnet18", num_classes=10), x, alpha=1.0), x)
        []
    """
    import torch
    import torch_pruning as tp

    problems = _group_problems(result) + _layer_problems(result)
    for name, m in result.model.named_modules():
        bad = _tensor_mismatch(m)
        if bad:
            problems.append(f"layer {name}: {bad}")
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(result.model, example_inputs)
    except Exception as err:
        return [*problems, f"the pruned model cannot be re-counted: {first_line(err)}"]
    if not math.isclose(macs, result.macs_after, rel_tol=1e-6) or int(params) != result.params_after:
        problems.append(f"re-counted MACs/params {macs:.6g}/{params} differ from the reported "
                        f"{result.macs_after:.6g}/{result.params_after}")
    return problems


def _group_problems(result: Any) -> list[str]:
    return [f"group {g.root}: {g.channels_before} -> {g.channels_after} channels"
            for g in result.groups if not 1 <= g.channels_after <= g.channels_before]


def _layer_problems(result: Any) -> list[str]:
    """Reported layers against the pruned model's, and the layers left alone against their outputs."""
    problems: list[str] = []
    modules = dict(result.model.named_modules())
    for layer in result.layers:
        m = modules.get(layer.name)
        if m is None:
            problems.append(f"layer {layer.name} reported but not in the pruned model")
            continue
        now = _channels(m)
        if now is not None and now != (layer.in_after, layer.out_after):
            problems.append(f"layer {layer.name}: reported {layer.in_after}->{layer.out_after} channels, "
                            f"has {now[0]}->{now[1]}")
        if not (0 < layer.in_after <= layer.in_before and 0 < layer.out_after <= layer.out_before):
            problems.append(f"layer {layer.name}: {layer.in_before}->{layer.out_before} became "
                            f"{layer.in_after}->{layer.out_after} channels")
    by_name = {layer.name: layer for layer in result.layers}
    for name in result.ignored:
        layer = by_name.get(name)
        if layer is not None and layer.out_after != layer.out_before:
            problems.append(f"ignored layer {name} lost output channels: {layer.out_before} -> {layer.out_after}")
    return problems


def _channels(m: Any) -> tuple[int, int] | None:
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels
    return None


def _tensor_mismatch(m: Any) -> str | None:
    """A layer whose declared channels and tensors disagree: pruned on one side only."""
    import torch.nn as nn

    shape = None if getattr(m, "weight", None) is None else tuple(m.weight.shape)
    bias = None if getattr(m, "bias", None) is None or not hasattr(m.bias, "shape") else tuple(m.bias.shape)
    if isinstance(m, nn.Linear):
        want = (m.out_features, m.in_features)
        if shape != want or bias not in (None, (m.out_features,)):
            return f"Linear({m.in_features}, {m.out_features}) holds weight {shape}, bias {bias}"
    elif isinstance(m, nn.modules.conv._ConvNd):
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            want = (m.in_channels, m.out_channels // m.groups)
        else:
            want = (m.out_channels, m.in_channels // m.groups)
        if shape is None or shape[:2] != want or bias not in (None, (m.out_channels,)):
            return f"{type(m).__name__}({m.in_channels}, {m.out_channels}) holds weight {shape}, bias {bias}"
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        sizes = {m.num_features}
        sizes |= {len(t) for t in (m.weight, m.bias, m.running_mean, m.running_var) if t is not None}
        if len(sizes) > 1:
            return f"{type(m).__name__}({m.num_features}) holds tensors of sizes {sorted(sizes)}"
    elif isinstance(m, nn.GroupNorm):
        if shape not in (None, (m.num_channels,)) or m.num_channels % m.num_groups:
            return f"GroupNorm({m.num_groups}, {m.num_channels}) holds weight {shape}"
    elif isinstance(m, nn.LayerNorm) and shape not in (None, tuple(m.normalized_shape)):
        return f"LayerNorm({tuple(m.normalized_shape)}) holds weight {shape}"
    return None
