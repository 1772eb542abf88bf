"""Torch-Pruning pruners for conv / linear layers that carry more per-output-channel parameters than
``weight`` and ``bias`` (NF-Nets' ``ScaledStdConv2d`` and its ``gain``).

Torch-Pruning's own conv and linear pruners slice ``weight`` and ``bias`` only: pruning such a layer left its
``gain`` at the old width and the model failed at the next forward. Each such layer type gets a pruner, passed to
Torch-Pruning through its ``customized_pruners`` extension point, that slices those parameters too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin.models.layers import WEIGHTED_TYPES, channel_count, is_depthwise


def extra_channel_parameters(layer: nn.Module) -> list[str]:
    """Names of ``layer``'s own parameters besides ``weight`` and ``bias`` that hold one entry per output
    channel (first dimension = ``out_channels`` / ``out_features``), e.g. ``["gain"]``.

    Examples:
        >>> from timm.layers import ScaledStdConv2d
        >>> extra_channel_parameters(ScaledStdConv2d(8, 16, 3)), extra_channel_parameters(nn.Conv2d(8, 16, 3))
        (['gain'], [])
    """
    if not isinstance(layer, WEIGHTED_TYPES):
        return []
    width = channel_count(layer, "out")
    return [
        name for name, p in layer.named_parameters(recurse=False)
        if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == width
    ]


def _slice_extra(layer: nn.Module, names: list[str], idxs: Sequence[int], width: int) -> None:
    """Drop entries ``idxs`` (out of ``width``) from each named parameter's first dimension."""
    drop = {int(i) for i in idxs}
    keep = torch.tensor([i for i in range(width) if i not in drop])
    for name in names:
        old = getattr(layer, name)
        setattr(layer, name, nn.Parameter(old.data.index_select(0, keep.to(old.device)),
                                          requires_grad=old.requires_grad))


class _ExtraParams:
    """Mixed into a Torch-Pruning pruner: output pruning also slices `extra_channel_parameters`."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        names, width = extra_channel_parameters(layer), channel_count(layer, "out")
        layer = super().prune_out_channels(layer, idxs)  # type: ignore[misc]
        _slice_extra(layer, names, idxs, width)
        return layer


class ExtraParamConvPruner(_ExtraParams, tp.pruner.function.ConvPruner):
    """Torch-Pruning's conv pruner, also slicing the layer's `extra_channel_parameters` on output pruning."""


class ExtraParamDepthwisePruner(_ExtraParams, tp.pruner.function.DepthwiseConvPruner):
    """Torch-Pruning's depthwise conv pruner (input and output channels are one), also slicing the layer's
    `extra_channel_parameters`."""

    prune_in_channels = _ExtraParams.prune_out_channels


class ExtraParamLinearPruner(_ExtraParams, tp.pruner.function.LinearPruner):
    """Torch-Pruning's linear pruner, also slicing the layer's `extra_channel_parameters` on output pruning."""


def customized_pruners(model: nn.Module) -> dict[type, tp.pruner.BasePruningFunc]:
    """A pruner for each layer type in ``model`` with `extra_channel_parameters`, for
    ``DependencyGraph.build_dependency(customized_pruners=...)``.

    Torch-Pruning looks pruners up by type, and a depthwise conv's pruner must tie its input and output
    channels while a dense conv's must not: a type used both ways in one model gets no pruner (its layers keep
    Torch-Pruning's default, and a group that breaks is left alone as before).

    Examples:
        >>> from timm.layers import ScaledStdConv2d
        >>> net = nn.Sequential(ScaledStdConv2d(3, 8, 3), nn.ReLU(), ScaledStdConv2d(8, 8, 3, groups=8))
        >>> {t.__name__: type(p).__name__ for t, p in customized_pruners(net).items()}
        {}
        >>> net = nn.Sequential(ScaledStdConv2d(3, 8, 3), nn.ReLU(), ScaledStdConv2d(8, 4, 1))
        >>> {t.__name__: type(p).__name__ for t, p in customized_pruners(net).items()}
        {'ScaledStdConv2d': 'ExtraParamConvPruner'}
    """
    kinds: dict[type, set[str]] = {}
    for m in model.modules():
        if extra_channel_parameters(m):
            kind = "linear" if isinstance(m, nn.Linear) else "depthwise" if is_depthwise(m) else "conv"
            kinds.setdefault(type(m), set()).add(kind)
    pruners = {"conv": ExtraParamConvPruner, "depthwise": ExtraParamDepthwisePruner, "linear": ExtraParamLinearPruner}
    return {t: pruners[next(iter(k))]() for t, k in kinds.items() if len(k) == 1}
