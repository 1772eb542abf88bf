"""Run a probe set on the deployment device and write its latency table; needs only onnxruntime and numpy.

On the workstation, ``pfgdf profile probes --model M --output probes.zip`` writes the probe graphs of a model.
Copy the zip to the device (a phone-class Linux board, any machine with Python and ONNX Runtime) with this
package's source, or just this file and ``pfgdf_plugin/measure/{table,probe_set,platform}.py``, and run::

    python -m pfgdf_plugin.device_probe probes.zip --threads 1 --output table.json

Then prune for that device: ``pfgdf prune --model M --target-speedup 2 --latency-table table.json ...``.

The timing here is also what prune() uses to build a table on the machine it runs on (`time_graph`), so a table
from a device and one from here are measured the same way: a fresh session per graph (sequential execution,
``threads`` intra-op threads, one inter-op thread, no spinning, all graph optimizations), two warm-up runs, then
the fastest of at least ``min_runs`` runs lasting at least ``min_seconds`` together. The fastest run, not the
median: a table describes the hardware, and on a busy machine the median of a 20-microsecond operator measures
the other processes (whole models are timed the same way for the table; reported speed-ups use interleaved
medians).

Examples:
    >>> from pfgdf_plugin.measure.probe_graphs import probe_graph
    >>> sig = {"op": "linear", "tokens": [4], "in": 32, "out": 16}
    >>> data, shape = probe_graph(sig, {"in": 32, "out": 16})
    >>> time_graph(data, shape, threads=1) > 0
    True
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pfgdf_plugin.measure.platform import cpu_flags, recommended_round_to
from pfgdf_plugin.measure.probe_set import ProbeSetError, read_probe_set
from pfgdf_plugin.measure.table import LatencyTable, TableError, this_machine

# Whole models in a table: as many runs as the benchmark protocol's medians take.
MODEL_RUNS = 50
MODEL_WARMUP = 10


def session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session as every latency in this package is measured (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _feed(sess: Any, shape: list[int]) -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    return {sess.get_inputs()[0].name: x}


def time_graph(model: bytes, shape: list[int], threads: int, *, min_runs: int = 10, min_seconds: float = 0.02,
               max_runs: int = 400, warmup: int = 2) -> float:
    """Milliseconds of the fastest run of ``model`` on an input of ``shape`` (see the module docstring)."""
    sess = session(model, threads)
    feed = _feed(sess, shape)
    for _ in range(warmup):
        sess.run(None, feed)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return min(samples)


def time_interleaved(models: list[bytes], shape: list[int], threads: int, *, runs: int = MODEL_RUNS,
                     warmup: int = MODEL_WARMUP) -> list[float]:
    """Median milliseconds of each model, timed in rotating order so that load on the machine hits all alike."""
    sessions = [session(m, threads) for m in models]
    feeds = [_feed(s, shape) for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            s.run(None, f)
    samples: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    for r in range(runs):
        shift = r % len(order)
        for i in order[shift:] + order[:shift]:
            t0 = time.perf_counter_ns()
            sessions[i].run(None, feeds[i])
            samples[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [statistics.median(s) for s in samples]


def overhead_ms(empty_graph: bytes, threads: int) -> float:
    """The runtime's cost of one ``run`` call (a graph that does nothing)."""
    return time_graph(empty_graph, [1], threads, min_runs=100)


def measure_points(points: Iterable[tuple[bytes, list[int]]], threads: int) -> list[float]:
    """Median milliseconds of each ``(graph, input shape)``."""
    return [time_graph(data, shape, threads) for data, shape in points]


def _progress(total: int, desc: str) -> Callable[[], None]:
    """A tqdm bar where tqdm is installed, else a line on stderr every 10%."""
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
        return lambda: bar.update()
    except ImportError:
        done = [0]

        def tick() -> None:
            done[0] += 1
            if total and done[0] * 10 // total != (done[0] - 1) * 10 // total:
                print(f"{desc}: {done[0]}/{total}", file=sys.stderr)

        return tick


def run_probe_set(path: str | os.PathLike, threads: int, *, progress: bool = True) -> LatencyTable:
    """Time every probe (and the model) of the probe set at ``path``; the table of this machine (source
    ``"device"``)."""
    from pfgdf_plugin.measure.probe_graphs import nest

    probes = read_probe_set(path)
    table = LatencyTable(key=this_machine(threads), step=recommended_round_to(cpu_flags()), source="device")
    tick = _progress(len(probes.operators) + (probes.model is not None), "probing") if progress else (lambda: None)
    table.overhead_ms = overhead_ms(probes.graphs[probes.overhead["file"]], threads)
    for op in probes.operators:
        ms = measure_points(((probes.graphs[p["file"]], p["input_shape"]) for p in op["points"]), threads)
        table.add(op["id"], op["signature"], op["grid"], nest(ms, op["grid"]))
        tick()
    if probes.model is not None:
        m = probes.model
        ms = time_graph(probes.graphs[m["file"]], m["input_shape"], threads, min_runs=MODEL_RUNS, warmup=MODEL_WARMUP)
        table.models[m["id"]] = {"ms": ms, "input_shape": m["input_shape"]}
        tick()
    return table


def _threads(value: str) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= cpus:
        raise argparse.ArgumentTypeError(f"--threads must be an integer in [1, {cpus}] (CPUs here), got {value!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pfgdf_plugin.device_probe",
        description="Time a probe set (from `pfgdf profile probes`) with ONNX Runtime on this machine and write "
                    "its latency table (JSON), for `pfgdf prune --latency-table`. Needs only onnxruntime and numpy.",
    )
    parser.add_argument("probes", help="the probe set (.zip) written by `pfgdf profile probes`")
    parser.add_argument("--threads", type=_threads, default=1,
                        help="ONNX Runtime intra-op threads, as the deployed app will use (default: 1)")
    parser.add_argument("--output", required=True, help="the latency table to write (.json; written atomically)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.suffix != ".json":
        parser.error(f"--output must end in .json, got {args.output!r}")
    if output.exists() and output.resolve() == Path(args.probes).resolve():
        parser.error("--output must not be the probe set itself")
    try:
        table = run_probe_set(args.probes, args.threads, progress=not args.no_progress)
    except (FileNotFoundError, ProbeSetError, TableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table.save(output)
    print(f"wrote {output}: {len(table.operators)} operators measured on {table.key.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
