"""Pipeline stages, one module each: prune, serialize (save/load)."""

from .prune import GroupChange, LayerChange, PruneResult, prune
from .serialize import load_pruned, save_pruned

__all__ = ["GroupChange", "LayerChange", "PruneResult", "load_pruned", "prune", "save_pruned"]
