"""Measurement: latency on ONNX Runtime (and PyTorch), the machine it ran on, and how results are rendered."""

from pfgdf_plugin.measure.latency import BenchmarkResult, Measurement, benchmark_latency

__all__ = ["BenchmarkResult", "Measurement", "benchmark_latency"]
