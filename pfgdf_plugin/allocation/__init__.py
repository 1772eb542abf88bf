"""Automated allocation: plans from scores, their predicted cost, and the threshold search."""

from pfgdf_plugin.allocation.bisection import SearchResult, bisect_threshold
from pfgdf_plugin.allocation.cost import Cost, CostModel
from pfgdf_plugin.allocation.plan import Plan, ScoredGroup, make_plan

__all__ = ["Cost", "CostModel", "Plan", "ScoredGroup", "SearchResult", "bisect_threshold", "make_plan"]
