"""Pipeline stages, one module each: prune, serialize (save/load), export (ONNX / ORT / INT8), benchmark."""

from .benchmark import BenchmarkResult, Measurement, benchmark_latency
from .export import Int8Export, OnnxExport, OrtExport, Parity, ParityError, export_onnx, export_ort, quantize_int8
from .graph import GraphTimeoutError
from .prune import GroupChange, LayerChange, PruneResult, TargetOutOfReachError, prune
from .serialize import load_pruned, save_pruned

__all__ = [
    "BenchmarkResult",
    "GraphTimeoutError",
    "GroupChange",
    "Int8Export",
    "LayerChange",
    "Measurement",
    "OnnxExport",
    "OrtExport",
    "Parity",
    "ParityError",
    "PruneResult",
    "TargetOutOfReachError",
    "benchmark_latency",
    "export_onnx",
    "export_ort",
    "load_pruned",
    "prune",
    "quantize_int8",
    "save_pruned",
]
