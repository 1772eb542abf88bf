"""Layer-type knowledge shared by criteria, the cost model and the pipeline."""

from __future__ import annotations

import torch.nn as nn

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)
"""Norm layers with (optional) per-channel affine parameters."""

WEIGHTED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
"""Layers with filters: the roots of prunable dependency groups."""


def is_depthwise(m: object) -> bool:
    """A conv whose every channel is its own group: its filter *is* the channel."""
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and m.groups == m.in_channels == m.out_channels
    )


def channel_count(m: nn.Module, direction: str) -> int | None:
    """Channels of ``m`` along ``direction`` (``"out"`` or ``"in"``); ``None`` for other layer types."""
    if isinstance(m, nn.Linear):
        return m.out_features if direction == "out" else m.in_features
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels if direction == "out" else m.in_channels
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, NORM_TYPES):
        return m.num_features
    return None


def find_gated(model: nn.Module) -> dict[nn.Module, int]:
    """Projections whose outputs are split into equal parts that are multiplied together (GLU-style MLPs).

    timm's ``GluMlp`` (EVA-02, SwiGLU-packed blocks) computes ``fc1`` then ``chunk(2)`` into a value and a gate of
    ``fc2.in`` channels each: both halves must lose the same positions. Returns ``{fc1: 2}`` for every block with
    ``fc1`` / ``fc2`` layers where ``fc1`` has exactly twice the channels ``fc2`` reads.
    """
    found: dict[nn.Module, int] = {}
    for block in model.modules():
        fc1, fc2 = getattr(block, "fc1", None), getattr(block, "fc2", None)
        if not (isinstance(fc1, WEIGHTED_TYPES) and isinstance(fc2, WEIGHTED_TYPES)):
            continue
        produced, read = channel_count(fc1, "out"), channel_count(fc2, "in")
        if produced and read and produced == 2 * read:
            found[fc1] = 2
    return found


def sync_linear_sizes(model: nn.Module) -> None:
    """Make each linear layer's declared sizes those of its weight.

    When two pruned channels map to the same input of a layer (both halves of a GLU's ``chunk(2)`` reach
    ``fc2``'s input ``p``), Torch-Pruning keeps the right weight columns but subtracts the index count twice from
    ``in_features``. The weight is what the layer computes with; the attribute is only bookkeeping.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = int(m.weight.shape[0]), int(m.weight.shape[1])
