"""Which hooked maps score a dependency group's channels, and in which order of trust (CHIP's group side).

A group's channels appear in several tensors. For the chosen ``feature`` each member of the group that owns such
a tensor becomes a `Member`: the name its calibration sums are stored under, and where its positions land in the
group. `tiers` orders them: members with a spatial map first, then members that see one position per sample (a
pooled vector: squeeze-excitation, a classifier), whose CI measures magnitude rather than independence. A channel
takes its score from the first tier that covers it (`pfgdf_plugin.criteria.channels.reduce_in_tiers`).

``feature="input"``: the maps the group's *consumers* read. Every conv or linear whose input channels are in the
group, every depthwise conv (its input is its channel), and the model's outputs when the group's channels are
returned (a layer that returns an output itself, or Torch-Pruning's output node behind a last activation).

Examples:
    >>> import torch, torch_pruning as tp
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> dg = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 16, 16))
    >>> group = dg.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=list(range(8)))
    >>> [(m.name, m.key, len(m.idxs)) for m in group_members(group, "input", Calibrated())]
    [('2', '2', 8)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import graph_of, module_name
from pfgdf_plugin.criteria.channels import channel_slices
from pfgdf_plugin.criteria.chip.session import output_key
from pfgdf_plugin.criteria.chip.stats import LayerStats
from pfgdf_plugin.models.layers import is_depthwise


@dataclass(frozen=True)
class Member:
    """One hooked map that scores part of a group.

    Attributes:
        name: the group member it comes from: a module name, or an `output_key` for a model output.
        key: the name its calibration sums are stored under (another layer's, when both read one tensor).
        idxs: the member's channel positions in that map.
        root_idxs: for each entry of ``idxs``, the group channel it belongs to.
        layer: the module whose hooked tensor it is (``None`` for a model output), for channel-count checks.
    """

    name: str
    key: str
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]
    layer: nn.Module | None = None


@dataclass
class Calibrated:
    """What a calibration learned about the model's structure (besides the sums themselves).

    Attributes:
        stats: per stored name, the sums (`LayerStats`).
        aliases: layer name -> the layer whose hooked input was the very same tensor.
        output_of: layer name -> `output_key` of the model output the layer returned itself.
        unowned_outputs: indices of the model outputs no hooked layer returned itself, in order.
    """

    stats: dict[str, LayerStats] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    output_of: dict[str, str] = field(default_factory=dict)
    unowned_outputs: list[int] = field(default_factory=list)


def _output_nodes(graph: tp.DependencyGraph) -> list[object]:
    """Torch-Pruning's output nodes, in the order it traced the model's outputs (public ``module2node`` and
    ``Node.type`` only)."""
    return [n for n in graph.module2node.values() if n.type == tp.ops.OPTYPE.OUTPUT]


def _output_members(group: tp.dependency.Group, cal: Calibrated) -> list[Member]:
    """Members for the group's output nodes: the model output behind each one (a last activation's map)."""
    items = [item for item in group if item.dep.target.type == tp.ops.OPTYPE.OUTPUT]
    if not items or not cal.unowned_outputs:
        return []
    nodes = _output_nodes(graph_of(group))
    if len(nodes) != len(cal.unowned_outputs):  # cannot tell which output a node is: no member
        return []
    root = group[0].dep.target.module
    channels_last = isinstance(root, (nn.Linear, nn.LayerNorm))
    out = []
    for item in items:
        if item.root_idxs is None or any(r is None for r in item.root_idxs) or not item.idxs:
            continue
        index = cal.unowned_outputs[nodes.index(item.dep.target)]
        keys = [output_key(index, last) for last in ((True, False) if channels_last else (False, True))]
        fits = [k for k in keys if k in cal.stats and cal.stats[k].channels > max(item.idxs)]
        if fits:
            out.append(Member(fits[0], fits[0], tuple(item.idxs), tuple(item.root_idxs)))
    return out


def group_members(group: tp.dependency.Group, feature: str, cal: Calibrated) -> list[Member]:
    """Every member of ``group`` whose hooked map scores it for ``feature``, once per stored map, in group order.

    Raises:
        ValueError: ``feature="norm"`` and the group has no affine norm layer (naming its root layer).
    """
    slices = channel_slices(group)
    if feature == "norm":
        chosen = [(s, s.name) for s in slices if s.role == "norm"]
        if not chosen and slices:
            root = module_name(graph_of(group), group[0].dep.target.module)
            raise ValueError(
                f"feature='norm': the group of layer {root!r} has no affine norm layer; use feature='input' or "
                "'output'"
            )
    elif feature == "output":
        chosen = [(s, s.name) for s in slices if s.role == "out"]
    else:
        chosen = [(s, cal.aliases.get(s.name, s.name)) for s in slices
                  if s.role == "in" or (s.role == "out" and is_depthwise(s.layer))]
        chosen += [(s, cal.output_of[s.name]) for s in slices if s.role != "in" and s.name in cal.output_of]
    # A model output's sums are not the layer's own tensor: no channel-count check against the layer.
    members = [Member(s.name, k, s.idxs, s.root_idxs, None if k.startswith("<") else s.layer) for s, k in chosen]
    if feature == "input":
        members += _output_members(group, cal)
    out, seen = [], set()
    for m in members:
        if m.key not in seen:
            seen.add(m.key)
            out.append(m)
    return out


def tiers(members: list[Member], stats: dict[str, LayerStats]) -> list[list[Member]]:
    """``[spatial, pooled]``: members whose map has more than one position per sample, then the others."""
    spatial = [m for m in members if stats[m.key].positions > 1]
    pooled = [m for m in members if stats[m.key].positions <= 1]
    return [t for t in (spatial, pooled) if t]
