"""Pipeline stage: edge latency benchmark, ONNX Runtime CPU, variants interleaved so drift hits all of them alike.

Protocol (SPEC section 5): CPU execution provider, sequential execution, ``intra_op_num_threads`` per round
(1 = one edge core), warm-up, then ``runs`` timed single-sample inferences per variant, taken in a rotating
order (run r starts at variant r mod n), reported as median and p90. Speed-up is the baseline's median
divided by the variant's, at the same thread count; the MACs reduction (baseline MACs / variant MACs, counted by
``tp.utils.count_ops_and_params`` at export time) is the most a dense pruned model can gain, and
``efficiency = speed-up / MACs reduction`` says how much of it was realized.

The result data lives in `pfgdf_plugin.measure.result`, its rendering in `pfgdf_plugin.measure.report`, loading the
models under test in `pfgdf_plugin.measure.variants`, the machine description in `pfgdf_plugin.measure.platform`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.measure.platform import available_cpus, environment, ort_platform, recommended_round_to
from pfgdf_plugin.measure.result import BenchmarkResult, Measurement, Variant
from pfgdf_plugin.measure.variants import cpu_session, load_variants, named_files, torch_variant

# The protocol's minimum; fewer runs are allowed (tests, smoke runs) but flagged in the report.
PROTOCOL_RUNS = 50


def benchmark_latency(
    models: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
    *,
    baseline: str | os.PathLike | None = None,
    threads: Sequence[int] = (1, 4),
    runs: int = PROTOCOL_RUNS,
    warmup: int = 10,
    input_size: Sequence[int] | None = None,
    torch_models: Mapping[str, nn.Module] | None = None,
    torch_baseline: str | None = None,
    spinning: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> BenchmarkResult:
    """Time ONNX / ORT models (and optionally PyTorch modules) on ONNX Runtime's CPU execution provider.

    Args:
        models: ``.onnx`` / ``.ort`` files, or a mapping ``name -> path``. A file is named by its name without
            ``.onnx`` (``model.int8.onnx`` -> ``model.int8``); ``.ort`` files keep their suffix (``model.ort``).
        baseline: the anchor (e.g. ``original.onnx`` from ``pfgdf export``); speed-ups are relative to it.
        threads: intra-op thread counts, one round each (1 = one edge core).
        runs: timed runs per variant and thread count (the protocol asks for >= 50).
        warmup: untimed runs per variant before timing.
        input_size: one sample's shape without batch; needed only if the models' input is not fixed.
        torch_models: PyTorch modules to time eagerly in the same interleaved loop (``torch.set_num_threads``).
        torch_baseline: the key of ``torch_models`` that PyTorch speed-ups are relative to.
        spinning: let ONNX Runtime's idle intra-op threads spin. Off by default: with interleaved variants a
            spinning pool keeps burning cores while the next variant runs.
        seed: seed of the random input (latency does not depend on values; the input is fixed for all runs).
        progress: progress bar on stderr.

    Returns:
        A `BenchmarkResult`; MACs come from the ``pfgdf.macs`` metadata that
        `pfgdf_plugin.deploy.onnx.export_onnx` stores (``tp.utils.count_ops_and_params``) and, for
        PyTorch modules, from ``tp.utils.count_ops_and_params`` directly.

    Raises:
        FileNotFoundError: a model file does not exist.
        ValueError: bad argument, a file ONNX Runtime cannot load, or models whose inputs disagree (before any
            timing).

    Examples:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> from pfgdf_plugin.deploy.onnx import export_onnx
        >>> model = CifarVGG((8, "M", 16))
        >>> path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "vgg.onnx"), (3, 32, 32),
        ...                    exporter="torchscript").path
        >>> result = benchmark_latency([path], threads=(1,), runs=5, warmup=1)
        >>> result.measurement("vgg", 1).median_ms > 0
        True
    """
    start = time.perf_counter()
    env = environment()  # before the run: the load average it reports is the one the run started under
    files = named_files(models, baseline)
    thread_counts = _threads(threads)
    runs = check.integer("runs", runs, 1)
    warmup = check.integer("warmup", warmup, 0)
    size = None if input_size is None else check.shape("input_size", input_size)
    torch_models = _torch_models(torch_models, torch_baseline)
    if not files and not torch_models:
        raise ValueError("models: give at least one .onnx or .ort file (or torch_models)")

    variants, shape = load_variants(files, size)
    if shape is None:
        if size is None:
            raise ValueError("input_size is required when only PyTorch models are timed")
        shape = size
    x = np.random.default_rng(seed).standard_normal((1, *shape)).astype(np.float32)
    x_torch = torch.from_numpy(x)
    # The PyTorch anchor first, as the ONNX one: tables read top-down from the reference.
    for name in sorted(torch_models, key=lambda n: n != torch_baseline):
        variants.append(torch_variant(name, torch_models[name], x_torch))
    baseline_name = next((n for n, (_, is_base) in files.items() if is_base), None)
    notes = _setup_notes(variants, baseline_name, runs, thread_counts)

    calls = _Calls(files, torch_models, x, x_torch, spinning)
    measurements = _time_rounds(variants, calls, thread_counts, runs, warmup, progress)
    _compare(measurements, baseline_name, torch_baseline)
    notes += _efficiency_notes(measurements, variants) + _target_notes(measurements, variants)
    return BenchmarkResult(
        variants=variants,
        measurements=measurements,
        baseline=baseline_name,
        torch_baseline=torch_baseline,
        input_shape=(1, *shape),
        threads=thread_counts,
        warmup=warmup,
        runs=runs,
        spinning=spinning,
        environment=env,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


# ------------------------------------------------------------------------------------------- arguments


def _threads(threads: object) -> tuple[int, ...]:
    """The distinct thread counts, in the order given; a single integer is one round."""
    if isinstance(threads, int) and not isinstance(threads, bool):
        threads = (threads,)
    if not isinstance(threads, Sequence) or not threads:
        raise check.bad("threads", "a non-empty list of integers >= 1", threads)
    values = [check.integer("threads", t, 1) for t in threads]
    return tuple(dict.fromkeys(values))


def _torch_models(torch_models: Mapping[str, nn.Module] | None, torch_baseline: str | None) -> dict[str, nn.Module]:
    """``torch_models`` as a dict, checked to hold modules and ``torch_baseline`` among its keys."""
    models = dict(torch_models or {})
    for name, module in models.items():
        if not isinstance(module, nn.Module):
            raise ValueError(f"torch_models[{name!r}] must be a torch.nn.Module, got {type(module).__name__}")
    if torch_baseline is not None and torch_baseline not in models:
        raise ValueError(f"torch_baseline must be one of torch_models' keys {sorted(models)}; "
                         f"got {torch_baseline!r}")
    return models


# ------------------------------------------------------------------------------------------- timing


@dataclass
class _Calls:
    """What it takes to run every variant once on the fixed input."""

    files: dict[str, tuple[Path, bool]]
    torch_models: dict[str, nn.Module]
    x: np.ndarray
    x_torch: torch.Tensor
    spinning: bool

    def build(self, variants: list[Variant], threads: int) -> dict[tuple[str, str], Callable[[], object]]:
        """``(name, runtime) -> call`` at ``threads`` threads (a fresh ONNX Runtime session per file)."""
        calls: dict[tuple[str, str], Callable[[], object]] = {}
        for v in variants:
            if v.runtime == "onnxruntime":
                session = cpu_session(self.files[v.name][0], threads, self.spinning)
                feed = {session.get_inputs()[0].name: self.x}
                calls[v.name, v.runtime] = lambda s=session, f=feed: s.run(None, f)
            else:
                module = self.torch_models[v.name]

                def call(m: nn.Module = module) -> None:
                    with torch.inference_mode():
                        m(self.x_torch)

                calls[v.name, v.runtime] = call
        return calls


def _time_rounds(variants: list[Variant], calls: _Calls, thread_counts: tuple[int, ...], runs: int, warmup: int,
                 progress: bool) -> list[Measurement]:
    """Every thread count in turn; torch's own thread count is restored afterwards."""
    measurements: list[Measurement] = []
    total = len(thread_counts) * (warmup + runs) * len(variants)
    bar = tqdm(total=total, desc="benchmark", disable=not progress, file=sys.stderr, leave=False)
    torch_threads = torch.get_num_threads()
    try:
        for t in thread_counts:
            measurements += _round(variants, calls, t, runs, warmup, bar)
    finally:
        torch.set_num_threads(torch_threads)
        bar.close()
    return measurements


def _round(variants: list[Variant], calls: _Calls, threads: int, runs: int, warmup: int, bar: tqdm
           ) -> list[Measurement]:
    """One thread count: build every session, warm each up, then time them in rotating order."""
    torch.set_num_threads(threads)
    run = calls.build(variants, threads)
    keys = list(run)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    with contextlib.ExitStack() as stack:
        for k in keys:
            if k[1] == "pytorch":
                stack.enter_context(eval_mode(calls.torch_models[k[0]]))
        for k in keys:
            for _ in range(warmup):
                run[k]()
                bar.update()
        for r in range(runs):
            shift = r % len(keys)
            for k in keys[shift:] + keys[:shift]:
                t0 = time.perf_counter_ns()
                run[k]()
                samples[k].append((time.perf_counter_ns() - t0) / 1e6)
                bar.update()
    macs = {(v.name, v.runtime): v.macs for v in variants}
    return [_measurement(k, threads, samples[k], macs[k]) for k in keys]


def _measurement(key: tuple[str, str], threads: int, samples_ms: list[float], macs: float | None) -> Measurement:
    """The statistics of one variant's samples at one thread count."""
    s = np.asarray(samples_ms)
    return Measurement(
        variant=key[0], runtime=key[1], threads=threads,
        median_ms=float(np.median(s)), p90_ms=float(np.percentile(s, 90)),
        min_ms=float(s.min()), mean_ms=float(s.mean()), samples_ms=[round(float(v), 5) for v in s],
        macs=macs,
    )


def _compare(measurements: list[Measurement], baseline: str | None, torch_baseline: str | None) -> None:
    """Fill in speed-up and MACs reduction against the anchor of each runtime, at the same thread count."""
    anchors = {"onnxruntime": baseline, "pytorch": torch_baseline}
    for m in measurements:
        anchor_name = anchors[m.runtime]
        if anchor_name is None:
            continue
        anchor = next(a for a in measurements
                      if (a.variant, a.runtime, a.threads) == (anchor_name, m.runtime, m.threads))
        m.speedup = anchor.median_ms / m.median_ms
        if anchor.macs and m.macs:
            m.macs_reduction = anchor.macs / m.macs


# ------------------------------------------------------------------------------------------- notes


def _setup_notes(variants: list[Variant], baseline: str | None, runs: int, thread_counts: tuple[int, ...]
                 ) -> list[str]:
    """What limits the run before it starts: few runs, no baseline, unknown MACs, foreign files, few CPUs."""
    notes = []
    if runs < PROTOCOL_RUNS:
        notes.append(f"{runs} runs per variant: below the protocol's {PROTOCOL_RUNS}, a smoke run only")
    if baseline is None:
        notes.append("no baseline: speed-ups and efficiency are not computed")
    for v in variants:
        if v.macs is None:
            notes.append(f"{v.name}: no pfgdf.macs metadata (not exported by pfgdf), so no MACs reduction "
                         "or efficiency")
    here = ort_platform()
    for v in variants:
        target = v.ort_target_platform
        if target and target != here:
            notes.append(f"{v.name} was converted for {target}: its fixed graph optimizations target that "
                         f"platform, not this {here} machine, so time it on the target device")
    if any(v.kind == "int8" for v in variants):
        notes.append("int8 variants keep the float model's MACs; their efficiency can exceed 1 because int8 "
                     "kernels do more multiply-adds per cycle")
    cpus = available_cpus()
    if max(thread_counts) > cpus:
        notes.append(f"{max(thread_counts)} threads on {cpus} available CPUs: oversubscribed, that round "
                     "measures contention, not scaling")
    return notes


def _efficiency_notes(measurements: list[Measurement], variants: list[Variant]) -> list[str]:
    """A hint on ``round_to`` when a float ONNX variant built for this machine realizes < 0.9 at 1 thread."""
    here = ort_platform()
    kinds = {v.name: v.kind for v in variants if v.runtime == "onnxruntime"}
    foreign = {v.name for v in variants if v.ort_target_platform and v.ort_target_platform != here}
    low = sorted({m.variant for m in measurements if m.runtime == "onnxruntime" and m.threads == 1
                  and kinds.get(m.variant) != "int8" and m.variant not in foreign
                  and m.efficiency is not None and m.efficiency < 0.9})
    if not low:
        return []
    return [f"efficiency below 0.9 at 1 thread for {', '.join(low)}: channel counts off ONNX Runtime's conv block "
            f"are a common cause; on this CPU prune with round_to={recommended_round_to()} (docs/deployment.md)"]


def _target_notes(measurements: list[Measurement], variants: list[Variant]) -> list[str]:
    """Target against achieved, for variants pruned to a latency target, at the target's thread count."""
    notes = []
    for v in variants:
        t = v.latency_target
        if t is None:
            continue
        m = next((m for m in measurements if m.variant == v.name and m.runtime == v.runtime
                  and m.threads == t["threads"]), None)
        predicted = t.get("predicted_speedup")
        said = f"; the table predicted {predicted:.2f}x" if isinstance(predicted, int | float) else ""
        if m is None or m.speedup is None:
            notes.append(f"{v.name}: pruned to a {t['target_speedup']:.2f}x latency target at {t['threads']} "
                         f"thread(s){said}; time it against its baseline at that thread count to compare")
        else:
            notes.append(f"{v.name}: latency target {t['target_speedup']:.2f}x at {t['threads']} thread(s), achieved "
                         f"{m.speedup:.2f}x here ({m.speedup / t['target_speedup']:.3f} of the target){said}")
    return notes
