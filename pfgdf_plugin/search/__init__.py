"""Automated allocation: plans from scores, their predicted cost, and the threshold search."""

from .bisection import SearchResult, bisect_threshold
from .cost import Cost, CostModel
from .plan import Plan, ScoredGroup, make_plan

__all__ = ["Cost", "CostModel", "Plan", "ScoredGroup", "SearchResult", "bisect_threshold", "make_plan"]
