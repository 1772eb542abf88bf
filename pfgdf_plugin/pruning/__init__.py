"""Pruning: one threshold over every dependency group, planned on copies, checked, healed, then applied."""

from pfgdf_plugin.pruning.api import GroupChange, LayerChange, PruneResult, TargetOutOfReachError, prune
from pfgdf_plugin.pruning.groups import GraphTimeoutError

__all__ = ["GraphTimeoutError", "GroupChange", "LayerChange", "PruneResult", "TargetOutOfReachError", "prune"]
