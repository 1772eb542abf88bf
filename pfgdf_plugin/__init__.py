"""PFGDF and CHIP filter pruning for Torch-Pruning's dependency graph, with an edge-deployment pipeline.

Example:
    >>> import timm, torch
    >>> from pfgdf_plugin import prune
    >>> result = prune(timm.create_model("resnet18", num_classes=10), torch.randn(1, 3, 64, 64), alpha=1.0)
    >>> 0 < result.macs_kept < 1
    True
"""

from .criteria import CHIPImportance, PFGDFImportance
from .models import create_model, find_classifier
from .pipeline import (
    PruneResult,
    benchmark_latency,
    export_onnx,
    export_ort,
    load_pruned,
    prune,
    quantize_int8,
    save_pruned,
)

__version__ = "0.1.0"

__all__ = [
    "CHIPImportance",
    "PFGDFImportance",
    "PruneResult",
    "__version__",
    "benchmark_latency",
    "create_model",
    "export_onnx",
    "export_ort",
    "find_classifier",
    "load_pruned",
    "prune",
    "quantize_int8",
    "save_pruned",
]
