"""Pruning: one threshold over every dependency group, planned on copies, checked, healed, then applied."""

from pfgdf_plugin.pruning.api import prune
from pfgdf_plugin.pruning.errors import GraphTimeoutError, TargetOutOfReachError
from pfgdf_plugin.pruning.result import GroupChange, LayerChange, PruneResult

__all__ = ["GraphTimeoutError", "GroupChange", "LayerChange", "PruneResult", "TargetOutOfReachError", "prune"]
