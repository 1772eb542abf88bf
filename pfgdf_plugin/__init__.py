"""PFGDF and CHIP filter pruning for Torch-Pruning's dependency graph, with an edge-deployment pipeline.

Example:
    >>> import timm, torch
    >>> from pfgdf_plugin import prune
    >>> result = prune(timm.create_model("resnet18", num_classes=10), torch.randn(1, 3, 64, 64), alpha=1.0)
    >>> 0 < result.macs_kept < 1
    True
"""

from pfgdf_plugin.criteria import CHIPImportance, PFGDFImportance
from pfgdf_plugin.deploy.export import export_onnx, export_ort, quantize_int8
from pfgdf_plugin.measure.latency import benchmark_latency
from pfgdf_plugin.models.saved import load_pruned, save_pruned
from pfgdf_plugin.models.timm import create_model, find_classifier
from pfgdf_plugin.pruning.api import PruneResult, prune
from pfgdf_plugin.recovery.finetune import FinetuneConfig, evaluate, finetune, recalibrate_bn

__version__ = "0.1.0"

__all__ = [
    "CHIPImportance",
    "FinetuneConfig",
    "PFGDFImportance",
    "PruneResult",
    "__version__",
    "benchmark_latency",
    "create_model",
    "evaluate",
    "export_onnx",
    "export_ort",
    "find_classifier",
    "finetune",
    "load_pruned",
    "prune",
    "quantize_int8",
    "recalibrate_bn",
    "save_pruned",
]
