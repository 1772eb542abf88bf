"""Rendering of a `BenchmarkResult`: a plain-text table, a Markdown summary, a latency plot per variant (PNG).

Examples:
    >>> si(2.5e6), speedup(1.5), speedup(None)
    ('2.50M', '1.50x', '-')
"""

from __future__ import annotations

import io
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import units

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pfgdf_plugin.measure.result import BenchmarkResult, Measurement, Variant

HEAD = ("variant", "threads", "MACs", "params", "median ms", "p90 ms", "speed-up", "MACs red.", "efficiency")
# Bar colours: the baseline grey, INT8 models orange, every other model blue; PyTorch eager bars are hatched.
_COLOURS = {"baseline": "#b0b0b0", "int8": "#dd8452", "float": "#4c72b0"}


def si(x: float | None) -> str:
    """``x`` with a K/M/G suffix and two decimals, no space (table cells); ``-`` for ``None``."""
    return units.si(x, 2, sep="")


def speedup(v: float | None) -> str:
    """A ratio as ``1.50x``; ``-`` for ``None``."""
    return "-" if v is None else f"{v:.2f}x"


def rows(result: BenchmarkResult) -> list[list[str]]:
    """One row of cells (as in `HEAD`) per measurement."""
    by_name = {(v.name, v.runtime): v for v in result.variants}
    out = []
    for m in result.measurements:
        v = by_name[(m.variant, m.runtime)]
        out.append([
            m.variant + (" (torch)" if m.runtime == "pytorch" else ""),
            str(m.threads),
            si(m.macs),
            si(v.params),
            f"{m.median_ms:.3f}",
            f"{m.p90_ms:.3f}",
            speedup(m.speedup),
            speedup(m.macs_reduction),
            "-" if m.efficiency is None else f"{m.efficiency:.2f}",
        ])
    return out


def table(result: BenchmarkResult) -> str:
    """A plain-text table: one row per variant and thread count, then the setup and the notes."""
    cells = rows(result)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(HEAD)]

    def line(row: tuple[str, ...] | list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    head = line(HEAD)
    out = [head, "-" * len(head), *(line(r) for r in cells), "-" * len(head), _footer(result)]
    out += [f"note: {n}" for n in result.notes]
    return "\n".join(out)


def _footer(result: BenchmarkResult) -> str:
    env = result.environment
    return (
        f"input {list(result.input_shape)}, {result.warmup} warm-up + {result.runs} interleaved runs per variant; "
        f"baseline: {result.baseline or 'none'}; {env.get('cpu', '?')}, {env.get('cpus_available', '?')} CPUs "
        f"available; onnxruntime {env.get('versions', {}).get('onnxruntime', '?')}"
    )


def markdown(result: BenchmarkResult) -> str:
    """A Markdown summary: setup, the table, and what efficiency means."""
    env = result.environment
    lines = [
        "# Latency benchmark",
        "",
        f"- input: `{list(result.input_shape)}`, ONNX Runtime CPU execution provider, sequential execution, "
        f"intra-op threads: {', '.join(map(str, result.threads))} (spinning "
        f"{'on' if result.spinning else 'off'})",
        f"- {result.warmup} warm-up runs, then {result.runs} timed runs per variant, interleaved; median and p90",
        f"- baseline: `{result.baseline or 'none'}`"
        + (f"; PyTorch baseline: `{result.torch_baseline}`" if result.torch_baseline else ""),
        f"- machine: {env.get('cpu', '?')}, {env.get('cpus_available', '?')} CPUs available, load average "
        f"at start {env.get('load_average', '?')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()),
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEAD))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result)]
    lines += [
        "",
        "Speed-up = baseline median / variant median at the same thread count. MACs red. = baseline MACs / "
        "variant MACs, the most a dense pruned model can gain. Efficiency = speed-up / MACs red.",
    ]
    lines += [f"\nNote: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def label(variant: Variant) -> str:
    """How plots name ``variant``: its name, then what it is where the name does not say, then its runtime.

    Examples:
        >>> from pfgdf_plugin.measure.result import Variant
        >>> label(Variant("model", "onnxruntime", None, None, None, None, kind="pruned"))
        'model (pruned)'
        >>> label(Variant("pruned.int8", "onnxruntime", None, None, None, None, kind="int8"))
        'pruned.int8'
        >>> label(Variant("pruned", "pytorch", None, None, None, None))
        'pruned (torch)'
    """
    text = variant.name
    if variant.kind and variant.kind not in variant.name.lower():
        text += f" ({variant.kind})"
    return text + (" (torch)" if variant.runtime == "pytorch" else "")


def quartiles(m: Measurement) -> tuple[float, float]:
    """The 25th and 75th percentiles of ``m``'s samples (the median twice with fewer than two samples).

    Examples:
        >>> from pfgdf_plugin.measure.result import Measurement
        >>> m = Measurement("a", "onnxruntime", 1, 2.0, 9.0, 1.0, 3.0, [1.0, 2.0, 2.0, 3.0, 9.0], None)
        >>> quartiles(m)
        (1.5, 6.0)
    """
    if len(m.samples_ms) < 2:
        return m.median_ms, m.median_ms
    q1, _, q3 = statistics.quantiles(m.samples_ms, n=4)
    return q1, q3


def figure(result: BenchmarkResult) -> Figure:
    """The latency plot of `plot` as a matplotlib figure: one bar per variant, one panel per thread count.

    Bars are medians with a whisker from the 25th to the 75th percentile (a slow tail of a busy machine does not
    hide them; p90 is in the table); above each bar, the median and the speed-up over the baseline; under it, the
    variant (`label`) and its MACs. The panels share their y-axis, so thread counts compare at a glance.

    Examples:
        >>> from pfgdf_plugin.measure.result import BenchmarkResult, Measurement, Variant
        >>> ms = [Measurement(n, "onnxruntime", 1, t, t, t, t, [t], 1e6, s) for n, t, s in
        ...       (("original", 2.0, 1.0), ("pruned", 1.0, 2.0))]
        >>> vs = [Variant(m.variant, "onnxruntime", None, 1e6, None, None) for m in ms]
        >>> fig = figure(BenchmarkResult(vs, ms, "original", None, (1, 3, 8, 8), (1,), 0, 1, False, {}, 0.0))
        >>> [t.get_text() for t in fig.axes[0].texts]
        ['2.000 ms\\nbaseline', '1.000 ms\\n2.00x']
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    variants = {(v.name, v.runtime): v for v in result.variants}
    panels = [[m for m in result.measurements if m.threads == t] for t in result.threads]
    bars = max((len(p) for p in panels), default=1)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.4, 0.9 * bars + 1.2) * len(panels) + 0.4, 4.4),
                             dpi=120, squeeze=False, sharey=True)
    medians = [m.median_ms for m in result.measurements]
    log_scale = bool(medians) and max(medians) / max(min(medians), 1e-9) > 20
    baselines = {("onnxruntime", result.baseline), ("pytorch", result.torch_baseline)}
    for ax, threads, ms in zip(axes[0], result.threads, panels, strict=True):
        _bars(ax, ms, variants, baselines)
        ax.set_title(f"{threads} intra-op thread{'s' * (threads > 1)}", fontsize=9)
    top = max((quartiles(m)[1] for m in result.measurements), default=1.0)
    if log_scale:  # int8 and eager variants can sit an order of magnitude apart
        from matplotlib import ticker

        axes[0][0].set_yscale("log")
        axes[0][0].set_ylim(top=top * 3)
        axes[0][0].yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    else:
        axes[0][0].set_ylim(0, top * 1.3)  # room for the labels above the bars
    axes[0][0].set_ylabel("latency, ms (median; whisker: 25th-75th percentile)", fontsize=8)
    title = f"Latency per variant, input {list(result.input_shape)}"
    if result.baseline:
        title += f"\nspeed-up = {result.baseline} median / variant median"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot(result: BenchmarkResult, path: str | os.PathLike) -> Path:
    """`figure` written to ``path`` as a PNG, atomically.

    Returns:
        The written path.

    Raises:
        ValueError: ``path`` does not end in ``.png``.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(target)!r}")
    import matplotlib.pyplot as plt

    fig = figure(result)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _io.write_with(target, lambda fh: fh.write(buffer.getvalue()))


def _bars(ax: Axes, measurements: list[Measurement], variants: dict[tuple[str, str], Variant],
          baselines: set[tuple[str, str | None]]) -> None:
    """One thread count: a bar per variant, its median and speed-up above it, its name and MACs below."""
    xs = list(range(len(measurements)))
    kinds = [variants[(m.variant, m.runtime)] for m in measurements]
    spread = [quartiles(m) for m in measurements]
    ax.bar(xs, [m.median_ms for m in measurements], width=0.6,
           color=[_colour(v, (m.runtime, m.variant) in baselines) for v, m in zip(kinds, measurements, strict=True)],
           hatch=["//" if m.runtime == "pytorch" else "" for m in measurements], edgecolor="black", linewidth=0.5,
           yerr=[[max(m.median_ms - q1, 0.0) for m, (q1, _) in zip(measurements, spread, strict=True)],
                 [max(q3 - m.median_ms, 0.0) for m, (_, q3) in zip(measurements, spread, strict=True)]],
           capsize=3)
    for x, m, (_, q3) in zip(xs, measurements, spread, strict=True):
        if (m.runtime, m.variant) in baselines:
            gain = "baseline"
        else:
            gain = "" if m.speedup is None else f"{m.speedup:.2f}x"
        ax.annotate(f"{_ms(m.median_ms)} ms\n{gain}".rstrip(), (x, max(q3, m.median_ms)), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [f"{label(v)}\n{si(m.macs)} MACs" if m.macs else label(v)
                       for v, m in zip(kinds, measurements, strict=True)], fontsize=7)
    ax.set_xlim(-0.6, len(xs) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)


def _colour(variant: Variant, is_baseline: bool) -> str:
    if is_baseline:
        return _COLOURS["baseline"]
    # The kind is only known for files export_onnx wrote with metadata; the name is the fallback.
    return _COLOURS["int8" if variant.kind == "int8" or "int8" in variant.name.lower() else "float"]


def _ms(value: float) -> str:
    """A latency as the table shows it: three decimals below 10 ms, one above."""
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"
