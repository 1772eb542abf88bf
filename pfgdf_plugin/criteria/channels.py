"""Which slice of which weight belongs to a group's channels: written once, shared by every criterion.

A Torch-Pruning dependency ``Group`` lists every layer that must shrink together when a set of channels is
removed: the conv that produces them, its norm layer, the next layers' input channels, every branch of a
residual add, the inputs behind a concatenation. `channel_slices` turns such a group into a list of
`ChannelSlice`, one per member that owns weights for those channels, each able to hand out one row of
weights per channel of its layer. Criteria then work on rows and never dispatch on layer types themselves.

Examples:
    >>> import torch, torch_pruning as tp
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
    >>> dg = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 16, 16))
    >>> group = dg.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=list(range(8)))
    >>> [(s.name, s.role, tuple(s.rows().shape)) for s in channel_slices(group)]
    [('0', 'out', (8, 27)), ('1', 'norm', (8, 1)), ('2', 'in', (8, 4))]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import graph_of, module_name
from pfgdf_plugin.models.layers import NORM_TYPES, WEIGHTED_TYPES, channel_count, is_depthwise

Role = Literal["out", "in", "norm"]
"""``out``: the channel is a filter (conv out-channel, linear out-feature) of this layer.
``in``: the channel is an input channel of this layer. ``norm``: a per-channel affine norm parameter."""


class Mapped(Protocol):
    """Anything that places per-position scores on a group's channels: ``root_idxs[j]`` is the group channel
    that the member's ``j``-th scored position belongs to (a `ChannelSlice`, or a criterion's own member)."""

    @property
    def root_idxs(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class ChannelSlice:
    """One group member's share of the group's channels.

    Attributes:
        name: the member's module name in the model (``"layer1.0.conv1"``), or its class name if unnamed.
        layer: the member module.
        role: how the channels sit in this layer's weight (see `Role`).
        idxs: the member's own channel positions along its pruned dimension.
        root_idxs: for each entry of ``idxs``, the group's (root layer's) channel it belongs to.
    """

    name: str
    layer: nn.Module
    role: Role
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]

    def rows(self) -> torch.Tensor:
        """Weights of *every* channel of this layer along the pruned dimension, one flattened row each.

        Row ``c`` holds exactly the weights that disappear when channel ``c`` is removed (for grouped and
        depthwise convs only the filters of the channel's own group). Rows cover the whole layer, not just
        ``idxs``, so that per-layer statistics (mean, std) see the layer's full distribution.
        """
        return layer_rows(self.layer, self.role)


def layer_rows(layer: nn.Module, role: Role) -> torch.Tensor:
    """Per-channel weight rows of ``layer`` for ``role``; shape ``[channels, weights_per_channel]``."""
    weight = layer.weight.detach()
    if role == "norm":
        return weight.reshape(-1, 1)
    if isinstance(layer, nn.Linear):
        return weight if role == "out" else weight.t()
    if isinstance(layer, nn.modules.conv._ConvNd):
        groups = layer.groups
        if layer.transposed:  # weight: [in, out / groups, *k]
            return weight.flatten(1) if role == "in" else _grouped_rows(weight, groups)
        # weight: [out, in / groups, *k]
        return weight.flatten(1) if role == "out" else _grouped_rows(weight, groups)
    raise TypeError(f"no per-channel weight rows for {type(layer).__name__} (role {role!r})")


def _grouped_rows(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Rows for the channels along dim 1 of a ``[A, B / groups, *k]`` weight (B channels in all).

    Channel ``b`` lives in group ``g = b // (B / groups)`` at column ``b % (B / groups)``, and only the
    ``A / groups`` rows of dim 0 that belong to group ``g`` touch it.
    """
    a, b_per_group = weight.shape[0], weight.shape[1]
    a_per_group = a // groups
    # [groups, A/g, B/g, k] -> [groups, B/g, A/g, k] -> [B, A/g * k]
    w = weight.reshape(groups, a_per_group, b_per_group, -1).transpose(1, 2)
    return w.reshape(groups * b_per_group, -1)


def channel_direction(layer: object, handler: object, graph: tp.DependencyGraph) -> Literal["out", "in"] | None:
    """Whether a group member loses output (``"out"``) or input (``"in"``) channels; ``None`` if neither.

    Norm layers and depthwise convs count as ``"out"``: their channel *is* their output (for a depthwise conv,
    removing the channel removes its filter). Other nodes (element-wise ops, concat/split/reshape, raw
    parameters, LSTM, MHA, PReLU, embeddings) give ``None``.
    """
    if isinstance(layer, NORM_TYPES) or is_depthwise(layer):
        return "out"
    if isinstance(layer, WEIGHTED_TYPES):
        if graph.is_out_channel_pruning_fn(handler):
            return "out"
        if graph.is_in_channel_pruning_fn(handler):
            return "in"
    return None


def _role_of(layer: object, handler: object, graph: tp.DependencyGraph) -> Role | None:
    """The role of one group member, or ``None`` when it owns no per-channel weights we can slice."""
    if isinstance(layer, NORM_TYPES):
        has_affine = getattr(layer, "affine", getattr(layer, "elementwise_affine", False))
        return "norm" if has_affine and getattr(layer, "weight", None) is not None else None
    return channel_direction(layer, handler, graph)


def channel_slices(group: tp.dependency.Group) -> list[ChannelSlice]:
    """Every member of ``group`` that owns per-channel weights, as `ChannelSlice` objects.

    Members appear once each, in group order. Members whose root index is unknown (``None``, which
    Torch-Pruning produces for some reshapes) are dropped, as Torch-Pruning's own criteria do, and so are
    members whose indices exceed their layer's channels (an inconsistent mapping through a split).
    """
    graph = graph_of(group)
    slices: list[ChannelSlice] = []
    seen: set[tuple[int, Role]] = set()
    for item in group:
        dep, idxs = item
        layer = dep.target.module
        role = _role_of(layer, dep.handler, graph)
        if role is None or (id(layer), role) in seen:
            continue
        root_idxs = item.root_idxs
        if root_idxs is None or any(r is None for r in root_idxs):
            continue
        # Torch-Pruning's index mapping through some splits hands a layer indices beyond its size (EdgeNeXt):
        # such a member cannot be sliced consistently, so it does not score the group.
        size = channel_count(layer, "in" if role == "in" else "out")
        if size is not None and idxs and max(idxs) >= size:
            continue
        seen.add((id(layer), role))
        slices.append(ChannelSlice(module_name(graph, layer), layer, role, tuple(idxs), tuple(root_idxs)))
    return slices


def primary_slices(slices: Sequence[ChannelSlice]) -> list[ChannelSlice]:
    """The members a filter criterion should score: filters if the group has any, else the fallback.

    Order of preference: ``out`` (conv filters, linear out-features), then ``in`` (input channels of the
    consuming layers, for groups whose producer is not prunable), then ``norm`` (affine norm scales).
    """
    for role in ("out", "in", "norm"):
        chosen = [s for s in slices if s.role == role]
        if chosen:
            return chosen
    return []


def group_size(group: tp.dependency.Group) -> int:
    """Number of channels the group scores (the length a criterion's result must have)."""
    return len(group[0].idxs)


Reduction = Literal["mean", "max", "min", "first"]
REDUCTIONS: tuple[str, ...] = ("mean", "max", "min", "first")


def reduce_to_group(
    group: tp.dependency.Group,
    slices: Sequence[Mapped],
    member_scores: Sequence[torch.Tensor],
    reduction: Reduction = "mean",
    missing: float = float("inf"),
) -> torch.Tensor:
    """Combine per-member channel scores into one score per group channel.

    ``member_scores[i][j]`` scores ``slices[i].idxs[j]``; it lands on the group channel
    ``slices[i].root_idxs[j]``. A group channel that several positions of the same member map to gets
    their mean first, so every member counts once. Channels no member scores get ``missing``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"group_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    root = list(group[0].root_idxs if group[0].root_idxs is not None else group[0].idxs)
    position = {r: i for i, r in enumerate(root)}
    n = len(root)
    per_member: list[tuple[torch.Tensor, torch.Tensor]] = []
    for s, score in zip(slices, member_scores, strict=True):
        pos = torch.tensor([position.get(r, -1) for r in s.root_idxs], dtype=torch.long)
        keep = pos >= 0
        pos, score = pos[keep], score.detach().to("cpu", torch.float64).reshape(-1)[keep]
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, pos, score)
        count = torch.zeros(n, dtype=torch.float64).index_add_(0, pos, torch.ones_like(score))
        covered = count > 0
        per_member.append((torch.where(covered, total / count.clamp(min=1), torch.nan), covered))
    if not per_member:
        return torch.full((n,), missing, dtype=torch.float64)
    values = torch.stack([v for v, _ in per_member])
    covered = torch.stack([c for _, c in per_member])
    any_covered = covered.any(0)
    if reduction == "mean":
        out = values.nan_to_num(0.0).sum(0) / covered.sum(0).clamp(min=1)
    elif reduction == "max":
        out = values.nan_to_num(-torch.inf).amax(0)
    elif reduction == "min":
        out = values.nan_to_num(torch.inf).amin(0)
    else:  # first member that covers the channel
        first = covered.to(torch.int8).argmax(0)
        out = values.gather(0, first.unsqueeze(0)).squeeze(0)
    return torch.where(any_covered, out, torch.full_like(out, missing))


def reduce_in_tiers(
    group: tp.dependency.Group,
    tiers: Sequence[tuple[Sequence[Mapped], Sequence[torch.Tensor]]],
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """One score per group channel from the first tier of members that covers it; NaN where no tier does.

    A criterion lists the members it trusts most first (for instance members with a spatial map) and weaker ones
    after (pooled maps). Within a tier, members combine as in `reduce_to_group`; across tiers, a channel takes its
    score from the first tier that covers it. So a member whose index mapping covers only part of the group (a
    concat input mapped onto half of the channels) scores those channels, and a later tier scores the rest.

    Args:
        group: the dependency group being scored.
        tiers: ``(members, member_scores)`` pairs, most trusted first (see `reduce_to_group`).
        reduction: how the members of one tier combine per channel.

    Returns:
        float64 scores, one per group channel, NaN for channels no member of any tier covers.

    Examples:
        >>> import torch, torch_pruning as tp
        >>> from types import SimpleNamespace
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1))
        >>> dg = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 4, 4))
        >>> group = dg.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[0, 1, 2, 3])
        >>> half, whole = SimpleNamespace(root_idxs=(2, 3)), SimpleNamespace(root_idxs=(0, 1, 2, 3))
        >>> reduce_in_tiers(group, [([half], [torch.tensor([5.0, 6.0])]), ([whole], [torch.arange(4.0)])]).tolist()
        [0.0, 1.0, 5.0, 6.0]
    """
    out: torch.Tensor | None = None
    for members, scores in tiers:
        tier = reduce_to_group(group, members, scores, reduction, missing=float("nan"))
        out = tier if out is None else torch.where(out.isnan(), tier, out)
    if out is None:
        return torch.full((group_size(group),), float("nan"), dtype=torch.float64)
    return out
