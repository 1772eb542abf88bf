"""From per-channel scores to a pruning plan: which channels of each group go, for one threshold."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class ScoredGroup:
    """One prunable dependency group with its channel scores, ready for planning.

    Attributes:
        root: the layer whose out-channels define the group (re-used to rebuild the group when pruning).
        root_name: the root's module name.
        handler: the Torch-Pruning pruning function of the root.
        channels: channels in the group (before pruning).
        ch_groups: channel grouping (grouped convs, q/k/v of an attention projection): pruning removes the
            same positions from each channel group.
        scores: one score per unit within a channel group (length `units`); a unit whose score is
            below the threshold is "insignificant".
        ranking: positions in the order they are pruned (ascending ``scores`` unless ranked by another
            criterion).
        member_positions: for the cost model, each coupled layer's ``(module, direction, positions)`` where
            ``positions`` lists, per channel of that layer in the group, the group channel it belongs to.
        member_names: names of the coupled layers with weights, for the report.
        block: channels per unit within a channel group: 1, or ``head_dim`` for attention (whole heads go).
        min_kept: channels the group keeps at least, whatever ``min_channels`` says (2 when a LayerNorm or
            GroupNorm normalises over these channels: over one channel it outputs a constant).
    """

    root: nn.Module
    root_name: str
    handler: Callable
    channels: int
    ch_groups: int
    scores: torch.Tensor
    ranking: torch.Tensor
    member_positions: list[tuple[nn.Module, str, torch.Tensor]] = field(default_factory=list)
    member_names: list[str] = field(default_factory=list)
    block: int = 1
    min_kept: int = 1

    @property
    def units(self) -> int:
        """Prunable units (channels, or heads) per channel group."""
        return self.channels // (self.ch_groups * self.block)


def removal_count(group: ScoredGroup, threshold: float, min_channels: int, round_to: int | None) -> int:
    """How many units (per channel group) the group loses at ``threshold``.

    The band (``scores < threshold``) sets the count; at least ``min_channels`` channels (and one unit) stay;
    with ``round_to`` the kept channel count is rounded *up* to a multiple of it (keeping more, never fewer).
    """
    m = group.units
    width = group.ch_groups * group.block
    k = int((group.scores < threshold).sum())
    min_kept = max(1, math.ceil(max(min_channels, group.min_kept) / width))
    kept = max(m - k, min(min_kept, m))
    if round_to and round_to > 1:
        while kept < m and (kept * width) % round_to:
            kept += 1
    return m - kept


def pruned_positions(group: ScoredGroup, count: int) -> torch.Tensor:
    """The first ``count`` units of the group's ranking, sorted."""
    return group.ranking[:count].sort().values


def expand_positions(group: ScoredGroup, positions: torch.Tensor) -> list[int]:
    """Units within a channel group -> the group's channel indices, every channel of each unit, repeated for
    every channel group."""
    b = group.block
    span = group.units * b
    return sorted(
        int(u) * b + j + g * span for g in range(group.ch_groups) for u in positions.tolist() for j in range(b)
    )


@dataclass(frozen=True)
class Plan:
    """Channels to remove per group (group channel indices), for one threshold."""

    threshold: float
    removed: tuple[tuple[int, ...], ...]

    def removed_count(self) -> int:
        return sum(len(r) for r in self.removed)


def make_plan(
    groups: list[ScoredGroup], threshold: float, min_channels: int, round_to: int | None
) -> Plan:
    """The pruning plan at ``threshold`` for every group."""
    removed = []
    for g in groups:
        count = removal_count(g, threshold, min_channels, round_to)
        removed.append(tuple(expand_positions(g, pruned_positions(g, count))) if count else ())
    return Plan(threshold=threshold, removed=tuple(removed))
