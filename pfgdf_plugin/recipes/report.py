"""The before/after summary of a job, rendered as a plain-text table (the CLI) or Markdown (``report.md``).

A summary is the dict `run_job` returns and writes to ``report.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pfgdf_plugin.data import BUILTIN


def thread_label(threads: Sequence[int]) -> str:
    """Thread counts as words.

    Examples:
        >>> thread_label([1, 4])
        '1 thread, 4 threads'
    """
    return ", ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    acc = s["accuracy"]
    source = s.get("val_data") or s["data"]
    data = source if source in BUILTIN else "/".join(Path(source).parts[-2:])
    rows = [
        (f"val accuracy ({data})", _pct(acc["unpruned"]), _pct(acc["pruned_after_finetuning"])),
        ("  pruned, stale BatchNorm", "", _pct(acc["pruned_before_recalibration"])),
        ("  pruned, recalibrated", "", _pct(acc["pruned_after_recalibration"])),
        ("parameters", f"{s['params']['before']:,}", f"{s['params']['after']:,}"),
        ("MACs", f"{s['macs']['before']:,.0f}", f"{s['macs']['after']:,.0f}"),
    ]
    if s["latency_ms"] is not None:
        t = s["latency_threads"]
        lat = s["latency_ms"][str(t)]
        rows.append((f"latency, {thread_label([t])} (ms)", f"{lat['original']['median']:.3f}",
                     f"{lat['pruned']['median']:.3f}"))
        if "pruned.int8" in lat:
            rows.append(("  pruned, INT8 (ms)", "", f"{lat['pruned.int8']['median']:.3f}"))
    return rows


def _latency_line(s: dict[str, Any], markdown: bool) -> str:
    alpha = f"{s['method'].upper()} alpha {s['alpha']:.4f}; total {s['seconds']:.0f} s"
    if s["latency_ms"] is None:
        return alpha
    eff = "n/a" if s["efficiency"] is None else f"{s['efficiency']:.2f}"
    at = f"{s['speedup']:.2f}x at {thread_label([s['latency_threads']])}"
    if markdown:
        return f"Speed-up {at} on ONNX Runtime (efficiency {eff}); {alpha}"
    return f"speed-up {at} (ONNX Runtime; efficiency {eff} of the MACs reduction); {alpha}"


def summary_table(summary: dict[str, Any]) -> str:
    """The before/after table of a `run_job` summary, as plain text."""
    lines = [f"{'':28}{'before':>14}{'after':>14}"]
    lines += [f"{a:28}{b:>14}{c:>14}" for a, b, c in _rows(summary)]
    lines.append(_latency_line(summary, markdown=False))
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The before/after table of a `run_job` summary, as Markdown (the body of ``report.md``)."""
    lines = ["| | before | after |", "| --- | ---: | ---: |"]
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in _rows(summary)]
    line = _latency_line(summary, markdown=True)
    text = "\n".join(lines) + f"\n\n{line[0].upper()}{line[1:]}.\n"
    if summary["latency_ms"] is not None:
        text += "\n![latency against MACs](latency.png)\n"
    return text


__all__ = ["summary_markdown", "summary_table", "thread_label"]
