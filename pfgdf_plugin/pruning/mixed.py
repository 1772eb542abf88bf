"""Split convolutions: a module that splits its input by channels, runs one conv per part, and concatenates.

timm's ``MixedConv2d`` (MixNet, tf_MixNet) runs ``torch.split(x, self.splits, 1)``, one conv per part (each
with its own kernel size), then ``torch.cat``. Torch-Pruning traces the split and the concatenation and prunes
the part convs correctly, but ``splits`` is plain bookkeeping it cannot see: left stale, the next forward pass
asks for the old sizes and fails. And a part whose every channel is pruned leaves a conv with no channels.
This module finds such modules, keeps their ``splits`` in step with their convs, and names, for each part conv,
the channels it holds so a plan can keep at least one of them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def find_split_convs(model: nn.Module) -> dict[nn.Module, list[nn.Conv2d]]:
    """Modules that split their input by ``splits`` (a list of channel counts, one per child conv).

    Returns ``{module: [part convs in order]}`` for every module with an integer list ``splits`` and exactly one
    conv child per entry (timm's ``MixedConv2d``). The entries are not compared with the convs' input channels:
    right after Torch-Pruning prunes the convs they differ, and that is when ``sync_split_sizes`` needs them.

    Examples:
        >>> from timm.layers import MixedConv2d
        >>> mixed = MixedConv2d(12, 12, kernel_size=[3, 5, 7], depthwise=True)
        >>> [c.kernel_size[0] for c in find_split_convs(nn.Sequential(mixed))[mixed]]
        [3, 5, 7]
    """
    found: dict[nn.Module, list[nn.Conv2d]] = {}
    for m in model.modules():
        splits = getattr(m, "splits", None)
        if not isinstance(splits, list | tuple) or not all(isinstance(s, int) for s in splits):
            continue
        parts = list(m.children())
        if len(parts) == len(splits) and all(isinstance(c, nn.Conv2d) for c in parts):
            found[m] = parts
    return found


def sync_split_sizes(split_convs: dict[nn.Module, list[nn.Conv2d]]) -> None:
    """Make each split module's ``splits`` (and its ``in_channels`` / ``out_channels``, where it has them) the
    channel counts its part convs now have.

    Examples:
        >>> from timm.layers import MixedConv2d
        >>> mixed = MixedConv2d(8, 8, kernel_size=[3, 5])
        >>> found = find_split_convs(mixed)
        >>> mixed["1"] = nn.Conv2d(2, 3, 5, padding=2)  # as if pruned from 4 to 2 inputs, 4 to 3 outputs
        >>> found[mixed][1] = mixed["1"]
        >>> sync_split_sizes(found)
        >>> mixed.splits, mixed.in_channels, mixed.out_channels
        ([4, 2], 6, 7)
    """
    for m, parts in split_convs.items():
        m.splits = [int(c.weight.shape[1] * c.groups) for c in parts]
        for c in parts:
            c.in_channels = int(c.weight.shape[1] * c.groups)
        if hasattr(m, "in_channels"):
            m.in_channels = sum(m.splits)
        if hasattr(m, "out_channels"):
            m.out_channels = sum(int(c.weight.shape[0]) for c in parts)


def split_parts(model: nn.Module) -> set[nn.Module]:
    """The part convs of every split module: each must keep at least one input and one output channel.

    Examples:
        >>> from timm.layers import MixedConv2d
        >>> len(split_parts(nn.Sequential(MixedConv2d(8, 8, kernel_size=[3, 5]), nn.Conv2d(8, 8, 1))))
        2
    """
    return {c for parts in find_split_convs(model).values() for c in parts}


def keep_one_per_part(
    scores: torch.Tensor, ranking: torch.Tensor, members: list[tuple[nn.Module, str, torch.Tensor]],
    parts: set[nn.Module], block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's unit scores and ranking with, for each split part conv among its ``members``, the part's
    last-ranked unit made unprunable (score ``+inf``, ranked last): a part losing every channel would leave a conv
    with no channels.

    ``members`` are ``(module, direction, group positions)``; ``block`` is channels per unit within a channel
    group. A part holding every unit of the group needs nothing: a group always keeps a unit. Returns new tensors;
    a group without such a part comes back unchanged.

    Examples:
        >>> conv = nn.Conv2d(4, 2, 1)
        >>> scores, ranking = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.arange(4)
        >>> s, r = keep_one_per_part(scores, ranking, [(conv, "in", torch.tensor([0, 1]))], {conv}, 1)
        >>> s.tolist(), r.tolist()
        ([1.0, inf, 3.0, 4.0], [0, 2, 3, 1])
    """
    units = scores.numel()
    span = units * block
    rank_of = torch.empty_like(ranking)
    rank_of[ranking] = torch.arange(units)
    keep: set[int] = set()
    for m, _direction, positions in members:
        if m not in parts or positions.numel() == 0:
            continue
        held = {int(p) % span // block for p in positions.tolist()}
        if len(held) < units:
            keep.add(max(held, key=lambda u: int(rank_of[u])))  # the unit the ranking prunes last
    if not keep:
        return scores, ranking
    scores = scores.clone()
    scores[sorted(keep)] = float("inf")
    last = torch.tensor([u in keep for u in ranking.tolist()])
    return scores, torch.cat([ranking[~last], ranking[last]])
