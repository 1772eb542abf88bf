"""Rendering of a `BenchmarkResult`: a plain-text table, a Markdown summary, a latency-vs-MACs plot (PNG).

Examples:
    >>> si(2.5e6), speedup(1.5), speedup(None)
    ('2.50M', '1.50x', '-')
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import units

if TYPE_CHECKING:
    from pfgdf_plugin.measure.result import BenchmarkResult, Measurement

HEAD = ("variant", "threads", "MACs", "params", "median ms", "p90 ms", "speed-up", "MACs red.", "efficiency")
# Plot order, marker and legend of each runtime (the runtimes of `pfgdf_plugin.measure.result.RUNTIMES`).
_STYLE = {"onnxruntime": ("o", "ONNX Runtime"), "pytorch": ("s", "PyTorch eager")}


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


def plot(result: BenchmarkResult, path: str | os.PathLike) -> Path:
    """Latency (median, bar up to p90) against MACs, one panel per thread count; PNG, written atomically.

    Variants without MACs (no ``pfgdf.macs`` metadata) are left out and named under the plot.

    Returns:
        The written path.

    Raises:
        ValueError: ``path`` does not end in ``.png``.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(target)!r}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = len(result.threads)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + 0.6, 4.2), dpi=120, squeeze=False)
    placed = [m for m in result.measurements if m.macs is not None]
    spread = max((m.p90_ms for m in placed), default=1.0) / max(min((m.median_ms for m in placed),
                                                                     default=1.0), 1e-9)
    for ax, threads in zip(axes[0], result.threads, strict=True):
        _panel(ax, [m for m in placed if m.threads == threads], threads, log_scale=spread > 10)
    axes[0][0].set_ylabel("latency ms (median, bar to p90)")
    fig.suptitle(f"Latency vs MACs, input {list(result.input_shape)}", fontsize=10)
    skipped = sorted({m.variant for m in result.measurements if m.macs is None})
    if skipped:
        fig.text(0.01, 0.01, f"not plotted (MACs unknown): {', '.join(skipped)}", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _io.write_with(target, lambda fh: fh.write(buffer.getvalue()))


def _panel(ax, measurements: list[Measurement], threads: int, *, log_scale: bool) -> None:
    """One thread count: a point per variant and runtime, labelled with the variant's name."""
    from matplotlib import ticker

    for runtime, (marker, label) in _STYLE.items():
        ms = [m for m in measurements if m.runtime == runtime]
        if not ms:
            continue
        ax.errorbar(
            [m.macs / 1e6 for m in ms],  # type: ignore[operator]
            [m.median_ms for m in ms],
            yerr=[[0.0] * len(ms), [m.p90_ms - m.median_ms for m in ms]],
            fmt=marker, capsize=3, linestyle="none", label=label,
        )
        for m in ms:
            ax.annotate(m.variant, (m.macs / 1e6, m.median_ms),  # type: ignore[operator]
                        textcoords="offset points", xytext=(5, -3), fontsize=7)
    if log_scale:  # int8 and eager variants can sit an order of magnitude apart
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_title(f"{threads} intra-op thread{'s' * (threads > 1)}", fontsize=9)
    ax.set_xlabel("MACs (millions)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
