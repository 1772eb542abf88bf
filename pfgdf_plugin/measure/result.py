"""The data of a latency benchmark: the models under test, one `Measurement` per model and thread count, and
the `BenchmarkResult` holding them with the environment, plus its JSON form.

Rendering (tables, Markdown, plots) lives in `pfgdf_plugin.measure.report`; the methods here only delegate.

Examples:
    >>> m = Measurement("pruned", "onnxruntime", 1, median_ms=2.0, p90_ms=2.5, min_ms=1.9, mean_ms=2.1,
    ...                 samples_ms=[2.0], macs=5e6, speedup=1.5, macs_reduction=2.0)
    >>> m.efficiency, m.noise
    (0.75, 0.25)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfgdf_plugin._util import io as _io
from pfgdf_plugin.measure import report

SCHEMA = "pfgdf-latency-benchmark/1"
RUNTIMES: tuple[str, ...] = ("onnxruntime", "pytorch")


@dataclass
class Variant:
    """One model under test: an ONNX / ORT file run by ONNX Runtime, or a PyTorch module run eagerly."""

    name: str
    runtime: str
    path: Path | None
    macs: float | None
    params: int | None
    size_bytes: int | None
    kind: str | None = None  # "original", "pruned", "int8" when the export recorded it
    ort_target_platform: str | None = None  # for .ort files made by export_ort
    # The latency target the model was pruned to, when `pfgdf prune` recorded one (`LatencyOutcome` fields).
    latency_target: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "path": None if self.path is None else str(self.path),
            "macs": self.macs,
            "params": self.params,
            "size_bytes": self.size_bytes,
            "kind": self.kind,
            "ort_target_platform": self.ort_target_platform,
            "latency_target": self.latency_target,
        }


@dataclass
class Measurement:
    """Latency of one variant at one thread count, and how it compares with the baseline of its runtime."""

    variant: str
    runtime: str
    threads: int
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    samples_ms: list[float]
    macs: float | None
    speedup: float | None = None
    macs_reduction: float | None = None

    @property
    def efficiency(self) -> float | None:
        """Realized speed-up / MACs reduction (1.0 = latency fell exactly as much as MACs)."""
        if self.speedup is None or not self.macs_reduction:
            return None
        return self.speedup / self.macs_reduction

    @property
    def noise(self) -> float:
        """p90 / median - 1: how far the slow tail sits above the median."""
        return self.p90_ms / self.median_ms - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "runtime": self.runtime,
            "threads": self.threads,
            "runs": len(self.samples_ms),
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            "noise_p90_over_median": self.noise,
            "macs": self.macs,
            "speedup": self.speedup,
            "macs_reduction": self.macs_reduction,
            "efficiency": self.efficiency,
            "samples_ms": self.samples_ms,
        }


@dataclass
class BenchmarkResult:
    """What `benchmark_latency` measured, with the environment it ran in (see its example)."""

    variants: list[Variant]
    measurements: list[Measurement]
    baseline: str | None
    torch_baseline: str | None
    input_shape: tuple[int, ...]
    threads: tuple[int, ...]
    warmup: int
    runs: int
    spinning: bool
    environment: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def measurement(self, variant: str, threads: int, runtime: str = "onnxruntime") -> Measurement:
        """The measurement of ``variant`` at ``threads`` (KeyError if there is none)."""
        for m in self.measurements:
            if (m.variant, m.threads, m.runtime) == (variant, threads, runtime):
                return m
        raise KeyError(f"no measurement of {variant!r} ({runtime}) at {threads} thread(s)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "baseline": self.baseline,
            "torch_baseline": self.torch_baseline,
            "input_shape": list(self.input_shape),
            "threads": list(self.threads),
            "warmup": self.warmup,
            "runs": self.runs,
            "statistic": "median and p90 of single-sample latencies, variants interleaved",
            "intra_op_spinning": self.spinning,
            "environment": self.environment,
            "seconds": self.seconds,
            "notes": self.notes,
            "variants": [v.to_dict() for v in self.variants],
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The result as JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _io.write_text(path, text + "\n")
        return text

    def table(self) -> str:
        """A plain-text table: one row per variant and thread count (`pfgdf_plugin.measure.report.table`)."""
        return report.table(self)

    def to_markdown(self) -> str:
        """A Markdown summary: setup, the table, and what efficiency means (`report.markdown`)."""
        return report.markdown(self)

    def plot(self, path: str | os.PathLike) -> Path:
        """Latency against MACs, one panel per thread count; PNG, written atomically (`report.plot`)."""
        return report.plot(self, path)
