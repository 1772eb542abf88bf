"""Measurement: latency on ONNX Runtime (and PyTorch), latency tables, the machine it ran on, and rendering.

Names are imported on first use: `pfgdf_plugin.measure.table` and `pfgdf_plugin.measure.platform` need no torch,
so the device probe can import them on a machine that has only onnxruntime and numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PROTOCOL_RUNS": "pfgdf_plugin.measure.latency",
    "benchmark_latency": "pfgdf_plugin.measure.latency",
    "environment": "pfgdf_plugin.measure.platform",
    "recommended_round_to": "pfgdf_plugin.measure.platform",
    "SCHEMA": "pfgdf_plugin.measure.result",
    "BenchmarkResult": "pfgdf_plugin.measure.result",
    "Measurement": "pfgdf_plugin.measure.result",
    "Variant": "pfgdf_plugin.measure.result",
    "LatencyTable": "pfgdf_plugin.measure.table",
    "TableKey": "pfgdf_plugin.measure.table",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
