"""Pipeline stage: edge latency benchmark, ONNX Runtime CPU, variants interleaved so drift hits all of them alike.

Protocol (SPEC section 5): CPU execution provider, sequential execution, ``intra_op_num_threads`` per round
(1 = one edge core), warm-up, then ``runs`` timed single-sample inferences per variant, taken in a rotating
order (run r starts at variant r mod n), reported as median and p90. Speed-up is the baseline's median
divided by the variant's, at the same thread count; the MACs reduction (baseline MACs / variant MACs, counted by
``tp.utils.count_ops_and_params`` at export time) is the most a dense pruned model can gain, and
``efficiency = speed-up / MACs reduction`` says how much of it was realized.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode

SCHEMA = "pfgdf-latency-benchmark/1"
RUNTIMES: tuple[str, ...] = ("onnxruntime", "pytorch")
# The protocol's minimum; fewer runs are allowed (tests, smoke runs) but flagged in the report.
PROTOCOL_RUNS = 50


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
    """What :func:`benchmark_latency` measured, with the environment it ran in (see its example)."""

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

    def _rows(self) -> list[list[str]]:
        by_name = {(v.name, v.runtime): v for v in self.variants}
        rows = []
        for m in self.measurements:
            v = by_name[(m.variant, m.runtime)]
            rows.append([
                m.variant + (" (torch)" if m.runtime == "pytorch" else ""),
                str(m.threads),
                _si(m.macs),
                _si(v.params),
                f"{m.median_ms:.3f}",
                f"{m.p90_ms:.3f}",
                _x(m.speedup),
                _x(m.macs_reduction),
                "-" if m.efficiency is None else f"{m.efficiency:.2f}",
            ])
        return rows

    _HEAD = ("variant", "threads", "MACs", "params", "median ms", "p90 ms", "speed-up", "MACs red.", "efficiency")

    def table(self) -> str:
        """A plain-text table: one row per variant and thread count."""
        rows = self._rows()
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(self._HEAD)]
        line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(self._HEAD, widths,
                                                                                         strict=True)))
        out = [line, "-" * len(line)]
        for r in rows:
            out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                               strict=True))))
        out.append("-" * len(line))
        out.append(self._footer())
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def _footer(self) -> str:
        env = self.environment
        return (
            f"input {list(self.input_shape)}, {self.warmup} warm-up + {self.runs} interleaved runs per variant; "
            f"baseline: {self.baseline or 'none'}; {env.get('cpu', '?')}, {env.get('cpus_available', '?')} CPUs "
            f"available; onnxruntime {env.get('versions', {}).get('onnxruntime', '?')}"
        )

    def to_markdown(self) -> str:
        """A Markdown summary: setup, the table, and what efficiency means."""
        rows = self._rows()
        env = self.environment
        lines = [
            "# Latency benchmark",
            "",
            f"- input: `{list(self.input_shape)}`, ONNX Runtime CPU execution provider, sequential execution, "
            f"intra-op threads: {', '.join(map(str, self.threads))} (spinning "
            f"{'on' if self.spinning else 'off'})",
            f"- {self.warmup} warm-up runs, then {self.runs} timed runs per variant, interleaved; median and p90",
            f"- baseline: `{self.baseline or 'none'}`"
            + (f"; PyTorch baseline: `{self.torch_baseline}`" if self.torch_baseline else ""),
            f"- machine: {env.get('cpu', '?')}, {env.get('cpus_available', '?')} CPUs available, load average "
            f"at start {env.get('load_average', '?')}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
            "",
            "| " + " | ".join(self._HEAD) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self._HEAD))) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += [
            "",
            "Speed-up = baseline median / variant median at the same thread count. MACs red. = baseline MACs / "
            "variant MACs, the most a dense pruned model can gain. Efficiency = speed-up / MACs red.",
        ]
        lines += [f"\nNote: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike) -> Path:
        """Latency (median, bar up to p90) against MACs, one panel per thread count; PNG, written atomically."""
        target = Path(path)
        if target.suffix.lower() != ".png":
            raise ValueError(f"plot path must end in .png, got {str(target)!r}")
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib import ticker

        panels = len(self.threads)
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 0.6, 4.2), dpi=120, squeeze=False)
        placed = [m for m in self.measurements if m.macs is not None]
        spread = max((m.p90_ms for m in placed), default=1.0) / max(min((m.median_ms for m in placed),
                                                                         default=1.0), 1e-9)
        markers = {"onnxruntime": "o", "pytorch": "s"}
        for ax, threads in zip(axes[0], self.threads, strict=True):
            for runtime in RUNTIMES:
                ms = [m for m in placed if m.threads == threads and m.runtime == runtime]
                if not ms:
                    continue
                ax.errorbar(
                    [m.macs / 1e6 for m in ms],  # type: ignore[operator]
                    [m.median_ms for m in ms],
                    yerr=[[0.0] * len(ms), [m.p90_ms - m.median_ms for m in ms]],
                    fmt=markers[runtime], capsize=3, linestyle="none",
                    label="ONNX Runtime" if runtime == "onnxruntime" else "PyTorch eager",
                )
                for m in ms:
                    ax.annotate(m.variant, (m.macs / 1e6, m.median_ms),  # type: ignore[operator]
                                textcoords="offset points", xytext=(5, -3), fontsize=7)
            if spread > 10:  # int8 and eager variants can sit an order of magnitude apart
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_title(f"{threads} intra-op thread{'s' * (threads > 1)}", fontsize=9)
            ax.set_xlabel("MACs (millions)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("latency ms (median, bar to p90)")
        fig.suptitle(f"Latency vs MACs, input {list(self.input_shape)}", fontsize=10)
        skipped = sorted({m.variant for m in self.measurements if m.macs is None})
        if skipped:
            fig.text(0.01, 0.01, f"not plotted (MACs unknown): {', '.join(skipped)}", fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return _io.write_with(target, lambda fh: fh.write(buffer.getvalue()))


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
        A :class:`BenchmarkResult`; MACs come from the ``pfgdf.macs`` metadata that
        :func:`~pfgdf_plugin.deploy.export.export_onnx` stores (``tp.utils.count_ops_and_params``) and, for
        PyTorch modules, from ``tp.utils.count_ops_and_params`` directly.

    Raises:
        FileNotFoundError: a model file does not exist.
        ValueError: bad argument, a file ONNX Runtime cannot load, or models whose inputs disagree (before any
            timing).

    Example:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> from pfgdf_plugin.deploy.export import export_onnx
        >>> path = export_onnx(CifarVGG(), os.path.join(tempfile.mkdtemp(), "vgg.onnx"), (3, 32, 32)).path
        >>> result = benchmark_latency([path], threads=(1,), runs=5, warmup=1)
        >>> result.measurement("vgg", 1).median_ms > 0
        True
    """
    start = time.perf_counter()
    env = environment()  # before the run: the load average it reports is the one the run started under
    files = _named_files(models, baseline)
    thread_counts = _threads(threads)
    runs = check.integer("runs", runs, 1)
    warmup = check.integer("warmup", warmup, 0)
    size = None if input_size is None else tuple(_positive_ints("input_size", input_size))
    torch_models = dict(torch_models or {})
    for name, module in torch_models.items():
        if not isinstance(module, nn.Module):
            raise ValueError(f"torch_models[{name!r}] must be a torch.nn.Module, got {type(module).__name__}")
    if torch_baseline is not None and torch_baseline not in torch_models:
        raise ValueError(f"torch_baseline must be one of torch_models' keys {sorted(torch_models)}; "
                         f"got {torch_baseline!r}")
    if not files and not torch_models:
        raise ValueError("models: give at least one .onnx or .ort file (or torch_models)")

    variants, shape = _load_variants(files, size)
    if shape is None:
        if size is None:
            raise ValueError("input_size is required when only PyTorch models are timed")
        shape = size
    x = np.random.default_rng(seed).standard_normal((1, *shape)).astype(np.float32)
    x_torch = torch.from_numpy(x)
    # The PyTorch anchor first, as the ONNX one: tables read top-down from the reference.
    for name in sorted(torch_models, key=lambda n: n != torch_baseline):
        variants.append(_torch_variant(name, torch_models[name], x_torch))
    baseline_name = next((n for n, (_, is_base) in files.items() if is_base), None)
    notes = []
    if runs < PROTOCOL_RUNS:
        notes.append(f"{runs} runs per variant: below the protocol's {PROTOCOL_RUNS}, a smoke run only")
    if baseline_name is None:
        notes.append("no baseline: speed-ups and efficiency are not computed")
    for v in variants:
        if v.macs is None:
            notes.append(f"{v.name}: no pfgdf.macs metadata (not exported by pfgdf), so no MACs reduction "
                         "or efficiency")
    here = "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "amd64"
    for v in variants:
        target = v.ort_target_platform
        if target and target != here:
            notes.append(f"{v.name} was converted for {target}: its fixed graph optimizations target that "
                         f"platform, not this {here} machine, so time it on the target device")
    if any(v.kind == "int8" for v in variants):
        notes.append("int8 variants keep the float model's MACs; their efficiency can exceed 1 because int8 "
                     "kernels do more multiply-adds per cycle")
    cpus = _available_cpus()
    if max(thread_counts) > cpus:
        notes.append(f"{max(thread_counts)} threads on {cpus} available CPUs: oversubscribed, that round "
                     "measures contention, not scaling")

    measurements: list[Measurement] = []
    total = len(thread_counts) * (warmup + runs) * len(variants)
    bar = tqdm(total=total, desc="benchmark", disable=not progress, file=sys.stderr, leave=False)
    torch_threads = torch.get_num_threads()
    try:
        for t in thread_counts:
            measurements += _round(variants, files, torch_models, x, x_torch, t, runs, warmup, spinning, bar)
    finally:
        torch.set_num_threads(torch_threads)
        bar.close()

    _compare(measurements, variants, baseline_name, torch_baseline)
    kinds = {v.name: v.kind for v in variants if v.runtime == "onnxruntime"}
    foreign = {v.name for v in variants if v.ort_target_platform and v.ort_target_platform != here}
    low = sorted({m.variant for m in measurements if m.runtime == "onnxruntime" and m.threads == 1
                  and kinds.get(m.variant) != "int8" and m.variant not in foreign
                  and m.efficiency is not None and m.efficiency < 0.9})
    if low:
        notes.append(
            f"efficiency below 0.9 at 1 thread for {', '.join(low)}: channel counts off ONNX Runtime's conv block "
            f"are a common cause; on this CPU prune with round_to={recommended_round_to()} (docs/deployment.md)"
        )
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


def _round(
    variants: list[Variant],
    files: dict[str, tuple[Path, bool]],
    torch_models: dict[str, nn.Module],
    x: np.ndarray,
    x_torch: torch.Tensor,
    threads: int,
    runs: int,
    warmup: int,
    spinning: bool,
    bar: tqdm,
) -> list[Measurement]:
    """One thread count: build every session, warm each up, then time them in rotating order."""
    torch.set_num_threads(threads)
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for v in variants:
        if v.runtime == "onnxruntime":
            session = _session(files[v.name][0], threads, spinning)
            feed = {session.get_inputs()[0].name: x}
            calls[v.name, v.runtime] = lambda s=session, f=feed: s.run(None, f)
        else:
            module = torch_models[v.name]

            def call(m: nn.Module = module) -> None:
                with torch.inference_mode():
                    m(x_torch)

            calls[v.name, v.runtime] = call
    keys = list(calls)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    with contextlib.ExitStack() as stack:
        for k in keys:
            if k[1] == "pytorch":
                stack.enter_context(eval_mode(torch_models[k[0]]))
        for k in keys:
            for _ in range(warmup):
                calls[k]()
                bar.update()
        for r in range(runs):
            shift = r % len(keys)
            for k in keys[shift:] + keys[:shift]:
                t0 = time.perf_counter_ns()
                calls[k]()
                samples[k].append((time.perf_counter_ns() - t0) / 1e6)
                bar.update()
    macs = {(v.name, v.runtime): v.macs for v in variants}
    out = []
    for k in keys:
        s = np.asarray(samples[k])
        out.append(Measurement(
            variant=k[0], runtime=k[1], threads=threads,
            median_ms=float(np.median(s)), p90_ms=float(np.percentile(s, 90)),
            min_ms=float(s.min()), mean_ms=float(s.mean()), samples_ms=[round(float(v), 5) for v in s],
            macs=macs[k],
        ))
    return out


def _compare(measurements: list[Measurement], variants: list[Variant], baseline: str | None,
             torch_baseline: str | None) -> None:
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


def _named_files(models: object, baseline: object) -> dict[str, tuple[Path, bool]]:
    from pfgdf_plugin.deploy.export import _input_file

    if isinstance(models, (str, os.PathLike)):
        models = [models]
    if isinstance(models, Mapping):
        pairs = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, Sequence):
        pairs = [(None, p) for p in models]
    else:
        raise ValueError(f"models must be a list of .onnx/.ort paths or a mapping name -> path, got {models!r}")
    if baseline is not None:
        pairs.insert(0, (None, baseline))
    files: dict[str, tuple[Path, bool]] = {}
    for i, (name, p) in enumerate(pairs):
        is_base = baseline is not None and i == 0
        path = _input_file("baseline" if is_base else "models", p, (".onnx", ".ort"))
        # model.onnx -> "model", model.ort -> "model.ort": the ORT file of a model stays apart from its source.
        key = name or (path.stem if path.suffix.lower() == ".onnx" else path.name)
        if key in files:
            if files[key][0].resolve() == path.resolve():
                raise ValueError(f"{str(path)!r} is given twice (as the baseline and as a model?)")
            raise ValueError(f"two models are named {key!r} ({str(files[key][0])!r} and {str(path)!r}); rename "
                             "one, or pass a mapping name -> path")
        files[key] = (path, is_base)
    return files


def _load_variants(files: dict[str, tuple[Path, bool]], size: tuple[int, ...] | None
                   ) -> tuple[list[Variant], tuple[int, ...] | None]:
    from pfgdf_plugin.deploy.export import META_PREFIX

    variants, shape, shape_from = [], size, "input_size"
    for name, (path, _) in files.items():
        session = _session(path, 1, False)
        meta = session.get_modelmeta().custom_metadata_map
        inp = session.get_inputs()
        if len(inp) != 1:
            raise ValueError(f"{str(path)!r}: expected a model with one input, found {len(inp)}")
        dims = inp[0].shape[1:]
        fixed = all(isinstance(d, int) and d > 0 for d in dims)
        if shape is None:
            if not fixed:
                raise ValueError(f"{str(path)!r} has a symbolic input size {inp[0].shape}; pass input_size")
            shape, shape_from = tuple(dims), str(path)
        elif len(dims) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape,
                                                                                          strict=False)):
            raise ValueError(
                f"input size mismatch: {str(path)!r} takes {[inp[0].shape[0], *dims]} but {shape_from} gives "
                f"{list(shape)} per sample; all variants must run on the same input"
            )
        batch = inp[0].shape[0]
        if isinstance(batch, int) and batch != 1:
            raise ValueError(f"{str(path)!r} has a fixed batch of {batch}; the benchmark times batch 1")
        macs = meta.get(f"{META_PREFIX}macs")
        params = meta.get(f"{META_PREFIX}params")
        variants.append(Variant(
            name=name, runtime="onnxruntime", path=path,
            macs=float(macs) if macs else None, params=int(float(params)) if params else None,
            size_bytes=path.stat().st_size, kind=meta.get(f"{META_PREFIX}variant"),
            ort_target_platform=meta.get(f"{META_PREFIX}ort_target_platform") if path.suffix == ".ort" else None,
        ))
    return variants, shape


def _torch_variant(name: str, module: nn.Module, x: torch.Tensor) -> Variant:
    with eval_mode(module), torch.no_grad():
        try:
            macs, params = tp.utils.count_ops_and_params(module, x)
        except Exception as err:
            raise ValueError(f"torch_models[{name!r}] cannot run on an input of shape {tuple(x.shape)}: {err}"
                             ) from err
    return Variant(name=name, runtime="pytorch", path=None, macs=float(macs), params=int(params),
                   size_bytes=None, kind=None)


def _session(path: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ValueError(f"ONNX Runtime cannot load {str(path)!r}: {err}") from err


def _threads(threads: object) -> tuple[int, ...]:
    if isinstance(threads, int) and not isinstance(threads, bool):
        threads = (threads,)
    if not isinstance(threads, Sequence) or not threads:
        raise ValueError(f"threads must be a non-empty list of integers >= 1, got {threads!r}")
    values = [check.integer("threads", t, 1) for t in threads]
    return tuple(dict.fromkeys(values))


def _positive_ints(name: str, values: Sequence[int]) -> list[int]:
    if not isinstance(values, Sequence) or not values or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        raise ValueError(f"{name} must be positive integers such as (3, 224, 224), got {values!r}")
    return list(values)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def recommended_round_to() -> int:
    """A ``round_to`` for :func:`~pfgdf_plugin.pruning.api.prune` that keeps convs on ONNX Runtime's fast path here.

    On x86, ONNX Runtime runs convs in its blocked NCHWc layout: 16-channel blocks with AVX-512F, 8 without.
    A conv whose input channels are not a multiple of 4 leaves that path (plus layout reorders around it); other
    counts are padded up to the block, which wastes the padded MACs (docs/deployment.md has the measurements).
    Elsewhere (ARM) 8 is returned as a safe multiple of NEON's 4-wide vectors; that case is not measured.

    Example:
        >>> recommended_round_to() in (8, 16)
        True
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        try:
            with open("/proc/cpuinfo") as fh:
                flags = next((line for line in fh if line.startswith("flags")), "")
        except OSError:
            flags = ""
        return 16 if " avx512f" in flags else 8
    return 8


def environment() -> dict[str, Any]:
    """Hardware, OS, load and package versions, recorded with every benchmark."""
    import onnx
    import onnxruntime

    from pfgdf_plugin import __version__

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "cpus_available": _available_cpus(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load,
        "versions": {
            "python": platform.python_version(),
            "pfgdf_plugin": __version__,
            "torch": torch.__version__,
            "torch_pruning": tp.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
    }


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"
