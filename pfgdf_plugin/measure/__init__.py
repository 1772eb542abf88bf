"""Measurement: latency on ONNX Runtime (and PyTorch), the machine it ran on, and how results are rendered."""

from pfgdf_plugin.measure.latency import PROTOCOL_RUNS, benchmark_latency
from pfgdf_plugin.measure.platform import environment, recommended_round_to
from pfgdf_plugin.measure.result import SCHEMA, BenchmarkResult, Measurement, Variant

__all__ = [
    "PROTOCOL_RUNS",
    "SCHEMA",
    "BenchmarkResult",
    "Measurement",
    "Variant",
    "benchmark_latency",
    "environment",
    "recommended_round_to",
]
