"""ONNX export of the comparison's models and their latency on ONNX Runtime at 1 intra-op thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from pfgdf_plugin.deploy.onnx import export_onnx
from pfgdf_plugin.measure.latency import benchmark_latency
from pfgdf_plugin.studies.compare.config import LATENCY_WARMUP


def export_model(model: nn.Module, path: Path, size: tuple[int, ...]) -> None:
    """Write ``model`` (one sample of shape ``size``) to ``path`` as ONNX with the TorchScript exporter."""
    # The TorchScript exporter: 0.04 s per export of SmallCNN against ~1 s for the dynamo one, and the same
    # ONNX Runtime latency (measured at 28x28, 1 thread: 0.360 ms median for both).
    export_onnx(model, path, size, exporter="torchscript")


def variant(row: dict[str, Any]) -> str:
    """The cell's name in the latency benchmark (and its notes).

    Examples:
        >>> variant({"criterion": "l1", "target": 0.5, "seed": 2})
        'l1@0.5/seed2'
    """
    return f"{row['criterion']}@{row['target']:g}/seed{row['seed']}"


def measure_latency(base: nn.Module, onnx_files: dict[str, Path], runs: list[dict[str, Any]], *,
                    size: tuple[int, ...], folder: Path, timed_runs: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Time the exported cells and the unpruned ``base`` in one interleaved run at 1 thread.

    Each row of ``runs`` whose model is in ``onnx_files`` gets ``latency_ms``, ``latency_p90_ms`` and
    ``speedup`` (in place).

    Args:
        base: the unpruned model, exported here to ``folder`` as the baseline.
        onnx_files: `variant` name -> ONNX file of each exported cell.
        runs: the cells' rows.
        size: one sample's shape.
        folder: where the baseline's ONNX file goes.
        timed_runs: timed single-sample runs per model.

    Returns:
        The unpruned model's latency fields, and the latency section of the report (protocol, notes, seconds).
    """
    baseline = folder / "unpruned.onnx"
    export_model(base, baseline, size)
    result = benchmark_latency(onnx_files, baseline=baseline, threads=(1,), runs=timed_runs,
                               warmup=LATENCY_WARMUP)
    anchor = result.measurement("unpruned", 1)
    for row in runs:
        if variant(row) in onnx_files:
            m = result.measurement(variant(row), 1)
            row |= {"latency_ms": m.median_ms, "latency_p90_ms": m.p90_ms, "speedup": m.speedup}
    protocol = {"runtime": "onnxruntime CPUExecutionProvider", "threads": 1, "warmup": LATENCY_WARMUP,
                "runs": timed_runs, "exporter": "torchscript", "statistic": "median of single-sample runs, "
                "all models interleaved; speed-up = unpruned median / pruned median",
                "notes": result.notes, "seconds": result.seconds}
    return {"latency_ms": anchor.median_ms, "latency_p90_ms": anchor.p90_ms}, protocol
