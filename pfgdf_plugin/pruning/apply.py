"""Applying a plan to a traced model copy: prune each group, fix attention head counts, measure and check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import group_search, module_name
from pfgdf_plugin.allocation import ScoredGroup
from pfgdf_plugin.models.inputs import Shapes, describe_shapes, outputs_of
from pfgdf_plugin.models.layers import sync_linear_sizes
from pfgdf_plugin.pruning.attention import find_heads, head_dim_changes, update_heads
from pfgdf_plugin.pruning.errors import short_error
from pfgdf_plugin.pruning.mixed import find_split_convs, sync_held_split_sizes, sync_split_sizes


@dataclass
class Applied:
    """What applying a plan to a model copy did: measured cost, groups Torch-Pruning refused, head changes."""

    macs: float
    params: int
    rejected: list[int]
    heads: list[tuple[str, int, int]]
    head_dims: list[tuple[str, int, int]] = field(default_factory=list)


def apply_plan(
    model: nn.Module,
    graph: tp.DependencyGraph,
    groups: list[ScoredGroup],
    removed: tuple[tuple[int, ...], ...],
    example_inputs: object,
    out_shape: Shapes,
) -> Applied:
    """Prune ``model`` (traced by ``graph``) by ``removed``, fix attention head counts, measure and check it.

    Groups are found in ``model`` by their root's name, so a plan made on one copy applies to another.
    Raises ``RuntimeError`` when pruning fails or the pruned model does not run with the old output shape.
    """
    by_name = dict(model.named_modules())
    names = {m: n for n, m in by_name.items()}
    layouts = find_heads(model)
    rejected = []
    for i, (g, cut) in enumerate(zip(groups, removed, strict=True)):
        if cut and not prune_group(graph, by_name[g.root_name], cut):
            rejected.append(i)
    changed = update_heads(layouts)
    sync_linear_sizes(model)
    macs, params = count_and_check(model, example_inputs, out_shape)
    dims = [(names[b], before, after) for b, before, after in head_dim_changes(layouts)]
    return Applied(macs, params, rejected, [(names[b], before, after) for b, before, after in changed], dims)


def prune_group(graph: tp.DependencyGraph, root: nn.Module, cut: tuple[int, ...]) -> bool:
    """Prune the group of ``root`` by ``cut`` (group channel indices); ``False`` when Torch-Pruning refuses.

    Channel splits map to the layer reading each part (`ordered_split_mapping`), and split convolutions'
    ``splits`` (bookkeeping Torch-Pruning cannot see) follow their pruned part convs, so the model runs after
    every group, as healing's trials need.
    """
    with group_search():
        pruning_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(cut))
    if not graph.check_pruning_group(pruning_group):
        return False
    check_in_range(graph, pruning_group)
    pruning_group.prune()
    sync_split_sizes(find_split_convs(graph.model))
    sync_held_split_sizes(graph)
    return True


def check_in_range(graph: tp.DependencyGraph, group: tp.dependency.Group) -> None:
    """Raise ``RuntimeError`` when a member would declare fewer channels than it keeps: output channels of any
    layer, or input channels of a conv, mapped outside the layer's channels.

    Torch-Pruning's mapping through some concatenations (CSP "focus" stems) can send a group to positions a
    layer does not have: its pruner then shrinks the declared ``out_channels`` but keeps every weight row, a
    model that still runs but is not what the plan says. (A linear layer's inputs may be reached twice, once out
    of range, through both halves of a GLU: the in-range positions are the right ones, and `sync_linear_sizes`
    sets the declared width from the weight.) A layer's output channel reached from two root channels (SKNet's
    attention over its two paths, ``reshape(B, 2, C)``) would be counted twice by the pruner, which then declares
    fewer channels than it keeps: raised too. Raised before anything is pruned.
    """
    for dep, idxs in group:
        layer = dep.target.module
        if not isinstance(layer, nn.Module) or graph.get_pruner_of_module(layer) is None:
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if not out and not isinstance(layer, nn.modules.conv._ConvNd):
            continue
        width = graph.get_out_channels(layer) if out else graph.get_in_channels(layer)
        bad = [int(i) for i in idxs if not 0 <= int(i) < width] if width else []
        if bad:
            raise RuntimeError(
                f"Torch-Pruning mapped the group to {'output' if out else 'input'} channel(s) {bad[:3]} of "
                f"{module_name(graph, layer)}, which has {width}"
            )
        twice = sorted(i for i, n in Counter(map(int, idxs)).items() if n > 1) if out else []
        if twice and any(True for _ in layer.parameters(recurse=False)):
            raise RuntimeError(
                f"Torch-Pruning mapped the group to output channel(s) {twice[:3]} of {module_name(graph, layer)} "
                "from more than one root channel"
            )


def count_and_check(model: nn.Module, example_inputs: object, out_shape: Shapes) -> tuple[float, int]:
    """MACs and params of the pruned model; the same forward pass proves it runs with the old output shape."""
    with outputs_of(model) as outputs:
        try:
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        except Exception as err:
            raise RuntimeError(f"the pruned model no longer runs ({short_error(err)})") from err
    if out_shape is not None and outputs and outputs[-1] != out_shape:
        raise RuntimeError(
            f"pruning changed the output shape from {describe_shapes(out_shape)} to {describe_shapes(outputs[-1])}"
        )
    return float(macs), int(params)
