"""PFGDF: a filter's importance is how far it sits from its layer's Gaussian, in units of the layer's sigma.

This is the reconstruction documented in the project's specification (the paper's full text is not at hand):

1. per filter ``i`` of a layer, a statistic ``s_i`` of its weights (L1 norm, L2 norm or signed mean);
2. the layer's Gaussian: ``mu = mean(s)``, ``sigma = std(s)`` (population std, ``ddof=0``);
3. the Gaussian distribution feature ``z_i = |s_i - mu| / sigma``;
4. filters with ``z_i < alpha`` are insignificant in distribution and pruned first.

Because ``z`` is measured in each layer's own sigma, one ``alpha`` gives every layer its own pruning ratio.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch_pruning as tp

from pfgdf_plugin.criteria.channels import (
    REDUCTIONS,
    ChannelSlice,
    Reduction,
    channel_slices,
    primary_slices,
    reduce_to_group,
)

Statistic = Literal["l1", "l2", "mean"]
STATISTICS: tuple[str, ...] = ("l1", "l2", "mean")

# Below this relative spread a layer's statistics differ only by float32 rounding: treat sigma as 0.
_SIGMA_RTOL = 1e-6


def filter_statistic(rows: torch.Tensor, statistic: Statistic) -> torch.Tensor:
    """One statistic per row (per filter), accumulated in float64."""
    rows = rows.detach()
    if statistic == "l1":
        return torch.linalg.vector_norm(rows, ord=1, dim=1, dtype=torch.float64)
    if statistic == "l2":
        return torch.linalg.vector_norm(rows, ord=2, dim=1, dtype=torch.float64)
    if statistic == "mean":
        return rows.mean(1, dtype=torch.float64)
    raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")


def gaussian_feature(stat: torch.Tensor) -> torch.Tensor:
    """``|s - mean(s)| / std(s)`` (population std), float64.

    Degenerate layers: with fewer than two filters every ``z`` is 0. When every filter has the same statistic
    (``sigma`` is 0 up to float32 rounding) the layer carries no ranking information; rather than putting every
    filter at ``z = 0`` (inside the band at any ``alpha > 0``, which would collapse the layer to ``min_channels``
    at the first step of a search), it is scored as an ideal Gaussian layer: the filters get the expected
    ``|z|`` quantiles ``|Phi^-1((k + 0.5) / n)|`` in index order, so ``alpha`` prunes the share a Gaussian puts
    inside the band (``erf(alpha / sqrt 2)``: 68% at ``alpha = 1``), lowest index first.

    Examples:
        >>> gaussian_feature(torch.tensor([1.0, 2.0, 3.0]))
        tensor([1.2247, 0.0000, 1.2247], dtype=torch.float64)
        >>> gaussian_feature(torch.full((4,), 0.5))             # identical filters: Gaussian quantiles
        tensor([0.3186, 0.3186, 1.1503, 1.1503], dtype=torch.float64)
    """
    stat = stat.to(torch.float64)
    n = stat.numel()
    if n < 2:
        return torch.zeros_like(stat)
    mu = stat.mean()
    sigma = stat.std(correction=0)
    if sigma <= _SIGMA_RTOL * stat.abs().mean().clamp(min=torch.finfo(torch.float64).tiny):
        return _ideal_gaussian_z(n)
    return (stat - mu).abs() / sigma


def _ideal_gaussian_z(n: int) -> torch.Tensor:
    """The ``n`` expected ``|z|`` quantiles of a standard normal, ascending."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.special.ndtri(p).abs().sort().values


class PFGDFImportance(tp.importance.Importance):
    """Pruning Filter via Gaussian Distribution Feature, as a Torch-Pruning importance.

    Called with a dependency group, returns one score per channel: the channel's Gaussian distribution
    feature ``z`` (small = pruned first), reduced over the group's coupled layers.

    Which layers are scored: the group's filters (conv out-channels of normal, grouped, depthwise and
    transposed convs; linear out-features). A group without any (for instance a group built by hand around
    a norm layer or an input channel) falls back to the input-channel slices of its consuming layers, then
    to the scales of its affine norm layers. Each scored layer is fitted to its own Gaussian over *all* its
    channels. A group with nothing to score returns ``None``, which Torch-Pruning's pruners skip.

    Args:
        statistic: per-filter statistic, ``"l1"``, ``"l2"`` or ``"mean"``.
        group_reduction: how coupled layers' ``z`` combine per channel: ``"mean"``, ``"max"``, ``"min"``
            or ``"first"``.

    Raises:
        ValueError: on an unknown option, and (when called) on a layer with NaN or Inf weights, naming it.

    Examples:
        >>> import timm, torch, torch_pruning as tp
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 64, 64), importance=PFGDFImportance(),
        ...                               pruning_ratio=0.5, global_pruning=True, ignored_layers=[model.fc])
        >>> pruner.step()
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(self, statistic: Statistic = "l1", group_reduction: Reduction = "mean") -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        if group_reduction not in REDUCTIONS:
            raise ValueError(f"group_reduction must be one of {REDUCTIONS}, got {group_reduction!r}")
        self.statistic: Statistic = statistic
        self.group_reduction: Reduction = group_reduction

    def __repr__(self) -> str:
        return f"PFGDFImportance(statistic={self.statistic!r}, group_reduction={self.group_reduction!r})"

    def layer_features(self, group: tp.dependency.Group) -> list[tuple[ChannelSlice, torch.Tensor]]:
        """Each scored member with the ``z`` of *its own* channels (``z[j]`` is channel ``idxs[j]``)."""
        out = []
        for s in primary_slices(channel_slices(group)):
            stat = filter_statistic(s.rows(), self.statistic)
            if not torch.isfinite(stat).all():  # any NaN/Inf weight makes its filter's statistic non-finite
                raise ValueError(
                    f"layer {s.name!r} has NaN or Inf weights; PFGDF cannot fit its distribution. "
                    "Fix or re-initialise that layer before pruning."
                )
            z = gaussian_feature(stat)
            out.append((s, z[list(s.idxs)]))
        return out

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        features = self.layer_features(group)
        if not features:
            return None
        slices, scores = zip(*features, strict=True)
        return reduce_to_group(group, slices, scores, self.group_reduction)
