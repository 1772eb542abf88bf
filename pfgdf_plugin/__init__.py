"""PFGDF and CHIP filter pruning for Torch-Pruning's dependency graph, with an edge-deployment pipeline.

Example:
    >>> import timm, torch
    >>> from pfgdf_plugin import prune
    >>> result = prune(timm.create_model("resnet18", num_classes=10), torch.randn(1, 3, 64, 64), alpha=1.0)
    >>> 0 < result.macs_kept < 1
    True
"""

from .criteria import PFGDFImportance
from .models import create_model, find_classifier
from .pipeline import PruneResult, load_pruned, prune, save_pruned

__version__ = "0.1.0"

__all__ = [
    "PFGDFImportance",
    "PruneResult",
    "__version__",
    "create_model",
    "find_classifier",
    "load_pruned",
    "prune",
    "save_pruned",
]
