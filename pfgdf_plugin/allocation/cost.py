"""Predict a plan's MACs and parameters without pruning, so a search never rebuilds the dependency graph.

Counting itself is Torch-Pruning's (``tp.utils.count_ops_and_params``, once, on the unpruned model). What
this module adds is how each counted layer's cost scales when its channels shrink: a conv or linear layer
scales with (kept outputs / outputs) x (kept inputs / inputs), a depthwise conv or a norm layer with its kept
fraction. Layers whose cost the groups do not determine (activations, pooling, attention kernels) are
assumed to shrink like the rest of the network. The pruned model's real MACs are always measured afterwards;
the prediction only steers the search.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import is_counted
from pfgdf_plugin.allocation.latency import LatencyModel
from pfgdf_plugin.allocation.plan import Plan, ScoredGroup
from pfgdf_plugin.models.layers import NORM_TYPES, WEIGHTED_TYPES, channel_count, is_depthwise


def _counted_units(model: nn.Module) -> list[nn.Module]:
    """Modules whose MACs Torch-Pruning's counter adds up (a counted module hides its children)."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if is_counted(m):
            units.append(m)
        else:
            for child in m.children():
                visit(child)

    visit(model)
    return units


@dataclass(frozen=True)
class Cost:
    """Predicted MACs, parameters and (with a latency model) milliseconds."""

    macs: float
    params: float
    latency: float | None = None


class CostModel:
    """MACs and parameters of the network after a `Plan`, predicted from one count."""

    def __init__(self, model: nn.Module, example_inputs: object, groups: list[ScoredGroup]) -> None:
        macs, params, layer_macs, _ = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
        self.base = Cost(float(macs), float(params))
        self.latency: LatencyModel | None = None
        self._groups = groups
        self._units = [(m, float(layer_macs.get(m) or 0.0)) for m in _counted_units(model)]
        # (module, weight numel, numel of its other own parameters): a weight scales with both of its
        # channel fractions, a bias or norm shift with the output fraction alone.
        self._param_layers = []
        for m in model.modules():
            total = sum(p.numel() for p in m.parameters(recurse=False))
            if total:
                weight = getattr(m, "weight", None)
                w = weight.numel() if isinstance(weight, nn.Parameter) else 0
                self._param_layers.append((m, float(w), float(total - w)))
        self._totals: dict[tuple[int, str], int] = {}
        for g in groups:
            for m, direction, _ in g.member_positions:
                total = channel_count(m, direction)
                if total:
                    self._totals[(id(m), direction)] = total

    def with_latency(self, latency: LatencyModel) -> CostModel:
        """The same counts, also predicting milliseconds with ``latency``."""
        other = copy.copy(self)
        other.latency = latency
        other.base = Cost(self.base.macs, self.base.params, latency.predict({}))
        return other

    def subset(self, groups: list[ScoredGroup]) -> CostModel:
        """The same counts, predicting plans over ``groups`` (some of the original groups) only."""
        other = copy.copy(self)
        other._groups = groups
        return other

    def fractions(self, plan: Plan) -> dict[tuple[int, str], float]:
        """Kept fraction of each layer's channels after ``plan``, by ``(id(layer), "in" | "out")`` (absent: 1)."""
        removed: dict[tuple[int, str], float] = {}
        for g, cut in zip(self._groups, plan.removed, strict=True):
            if not cut:
                continue
            mask = torch.zeros(g.channels, dtype=torch.bool)
            mask[list(cut)] = True
            for m, direction, positions in g.member_positions:
                key = (id(m), direction)
                removed[key] = removed.get(key, 0.0) + float(mask[positions].sum())
        return {k: 1.0 - v / self._totals[k] for k, v in removed.items() if k in self._totals}

    @staticmethod
    def _factor(m: nn.Module, frac: dict[tuple[int, str], float]) -> float | None:
        fo = frac.get((id(m), "out"), 1.0)
        if isinstance(m, NORM_TYPES) or is_depthwise(m):
            return fo
        if isinstance(m, WEIGHTED_TYPES):
            return fo * frac.get((id(m), "in"), 1.0)
        return None

    def estimate(self, plan: Plan) -> Cost:
        """Predicted cost after ``plan``."""
        frac = self.fractions(plan)
        known_before = known_after = other = 0.0
        for m, macs in self._units:
            f = self._factor(m, frac)
            if f is None:
                other += macs
            else:
                known_before += macs
                known_after += macs * f
        shrink = known_after / known_before if known_before else 1.0
        params = 0.0
        for m, weight, rest in self._param_layers:
            f = self._factor(m, frac)
            if f is None:
                params += weight + rest
            else:
                params += weight * f + rest * frac.get((id(m), "out"), 1.0)
        latency = None if self.latency is None else self.latency.predict(frac)
        return Cost(macs=known_after + other * shrink, params=params, latency=latency)
