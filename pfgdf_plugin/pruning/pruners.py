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

_CONV_OR_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)


def extra_channel_parameters(layer: nn.Module) -> list[str]:
    """Names of ``layer``'s own parameters besides ``weight`` and ``bias`` that hold one entry per output
    channel (first dimension = ``out_channels`` / ``out_features``), e.g. ``["gain"]``.

    Examples:
        >>> from timm.layers import ScaledStdConv2d
        >>> extra_channel_parameters(ScaledStdConv2d(8, 16, 3)), extra_channel_parameters(nn.Conv2d(8, 16, 3))
        (['gain'], [])
    """
    if not isinstance(layer, _CONV_OR_LINEAR):
        return []
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return [
        name for name, p in layer.named_parameters(recurse=False)
        if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == width
    ]


def _keep(n: int, idxs: Sequence[int]) -> list[int]:
    drop = set(int(i) for i in idxs)
    return [i for i in range(n) if i not in drop]


def _slice_extra(layer: nn.Module, names: list[str], keep: list[int]) -> None:
    for name in names:
        old = getattr(layer, name)
        kept = nn.Parameter(old.data.index_select(0, torch.tensor(keep, device=old.device)),
                            requires_grad=old.requires_grad)
        setattr(layer, name, kept)


class ExtraParamConvPruner(tp.pruner.function.ConvPruner):
    """Torch-Pruning's conv pruner, also slicing the layer's `extra_channel_parameters` on output pruning."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        names, keep = extra_channel_parameters(layer), _keep(layer.out_channels, idxs)
        layer = super().prune_out_channels(layer, idxs)
        _slice_extra(layer, names, keep)
        return layer


class ExtraParamDepthwisePruner(tp.pruner.function.DepthwiseConvPruner):
    """Torch-Pruning's depthwise conv pruner (input and output channels are one), also slicing the layer's
    `extra_channel_parameters`."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        names, keep = extra_channel_parameters(layer), _keep(layer.out_channels, idxs)
        layer = super().prune_out_channels(layer, idxs)
        _slice_extra(layer, names, keep)
        return layer

    prune_in_channels = prune_out_channels


class ExtraParamLinearPruner(tp.pruner.function.LinearPruner):
    """Torch-Pruning's linear pruner, also slicing the layer's `extra_channel_parameters` on output pruning."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        names, keep = extra_channel_parameters(layer), _keep(layer.out_features, idxs)
        layer = super().prune_out_channels(layer, idxs)
        _slice_extra(layer, names, keep)
        return layer


def _is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == layer.out_channels > 1


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
            kind = "linear" if isinstance(m, nn.Linear) else "depthwise" if _is_depthwise(m) else "conv"
            kinds.setdefault(type(m), set()).add(kind)
    pruners = {"conv": ExtraParamConvPruner, "depthwise": ExtraParamDepthwisePruner, "linear": ExtraParamLinearPruner}
    return {t: pruners[next(iter(k))]() for t, k in kinds.items() if len(k) == 1}
