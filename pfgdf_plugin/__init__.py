"""PFGDF and CHIP filter pruning for Torch-Pruning's dependency graph, with an edge-deployment pipeline.

Names are imported on first use, so ``import pfgdf_plugin`` (and ``pfgdf --help``) stays fast and a command
loads only what it needs.

Examples:
    >>> import timm, torch
    >>> from pfgdf_plugin import prune
    >>> result = prune(timm.create_model("resnet18", num_classes=10), torch.randn(1, 3, 64, 64), alpha=1.0)
    >>> 0 < result.macs_kept < 1
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "CHIPImportance": "pfgdf_plugin.criteria.chip",
    "PFGDFImportance": "pfgdf_plugin.criteria.pfgdf",
    "prune": "pfgdf_plugin.pruning.api",
    "PruneResult": "pfgdf_plugin.pruning.result",
    "create_model": "pfgdf_plugin.models.timm",
    "find_classifier": "pfgdf_plugin.models.timm",
    "save_pruned": "pfgdf_plugin.models.saved",
    "load_pruned": "pfgdf_plugin.models.saved",
    "recalibrate_bn": "pfgdf_plugin.recovery.bn",
    "evaluate": "pfgdf_plugin.recovery.evaluate",
    "finetune": "pfgdf_plugin.recovery.finetune",
    "FinetuneConfig": "pfgdf_plugin.recovery.finetune",
    "export_onnx": "pfgdf_plugin.deploy.onnx",
    "export_ort": "pfgdf_plugin.deploy.ort",
    "quantize_int8": "pfgdf_plugin.deploy.int8",
    "benchmark_latency": "pfgdf_plugin.measure.latency",
}

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

if TYPE_CHECKING:  # what static tools (type checkers, the API reference) see
    from pfgdf_plugin.criteria.chip import CHIPImportance
    from pfgdf_plugin.criteria.pfgdf import PFGDFImportance
    from pfgdf_plugin.deploy.int8 import quantize_int8
    from pfgdf_plugin.deploy.onnx import export_onnx
    from pfgdf_plugin.deploy.ort import export_ort
    from pfgdf_plugin.measure.latency import benchmark_latency
    from pfgdf_plugin.models.saved import load_pruned, save_pruned
    from pfgdf_plugin.models.timm import create_model, find_classifier
    from pfgdf_plugin.pruning.api import prune
    from pfgdf_plugin.pruning.result import PruneResult
    from pfgdf_plugin.recovery.bn import recalibrate_bn
    from pfgdf_plugin.recovery.evaluate import evaluate
    from pfgdf_plugin.recovery.finetune import FinetuneConfig, finetune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pfgdf_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
