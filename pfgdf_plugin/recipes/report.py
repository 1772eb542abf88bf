"""The unpruned/pruned summary of a job, rendered as a plain-text table (the CLI) or Markdown (``report.md``).

A summary is the dict `run_job` returns and writes to ``report.json``. The second column is the pruned model after
the whole recovery (BatchNorm recalibration, then fine-tuning when the recipe asks for it); the rows under the
accuracy show the pruned model before those steps. With an INT8 export, its latency and its quality (top-1
agreement with the float model, largest output error) sit together, and a sentence says when INT8 is slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pfgdf_plugin.data import BUILTIN
from pfgdf_plugin.measure.platform import cpu_flags, cpu_name

# ISA flags (as /proc/cpuinfo names them) of 8-bit dot-product instructions, which ONNX Runtime's INT8 kernels need
# to run faster than float: AVX-512 VNNI and AVX-VNNI on x86, the dot-product extension on ARM.
INT8_DOT_FLAGS: frozenset[str] = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def thread_label(threads: Sequence[int]) -> str:
    """Thread counts as words.

    Examples:
        >>> thread_label([1, 4])
        '1 thread, 4 threads'
    """
    return ", ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)


def columns(summary: dict[str, Any]) -> tuple[str, str]:
    """The table's two column titles: the unpruned model, and the pruned one after its recovery.

    Examples:
        >>> columns({"finetune_history": [{"epoch": 1}]}), columns({"finetune_history": []})
        (('unpruned', 'pruned, fine-tuned'), ('unpruned', 'pruned'))
    """
    return "unpruned", "pruned, fine-tuned" if summary.get("finetune_history") else "pruned"


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
    lat = _latencies(s)
    if lat is not None:
        rows.append((f"latency, {thread_label([s['latency_threads']])} (ms)", f"{lat['original']['median']:.3f}",
                     f"{lat['pruned']['median']:.3f}"))
        if "pruned.int8" in lat:
            rows.append(("  pruned, INT8 (ms)", "", f"{lat['pruned.int8']['median']:.3f}"))
    int8 = (s.get("exports") or {}).get("int8")
    if int8:
        agreement = int8.get("top1_agreement")
        rows.append(("  INT8 agrees with float (top-1)", "", "n/a" if agreement is None else f"{agreement:.1%}"))
        rows.append(("  INT8 output error (max, rel.)", "", f"{_relative_error(int8):.1%}"))
    return rows


def _latencies(s: dict[str, Any]) -> dict[str, Any] | None:
    """The medians and p90s at the table's thread count, or ``None`` without a latency run."""
    if s["latency_ms"] is None:
        return None
    return s["latency_ms"][str(s["latency_threads"])]


def _relative_error(int8: dict[str, Any]) -> float:
    """max |INT8 output - float output| / max |float output| on the calibration images."""
    return int8["max_abs_error"] / max(int8["max_abs_output"], 1e-30)


def _latency_line(s: dict[str, Any], markdown: bool) -> str:
    alpha = f"{s['method'].upper()} alpha {s['alpha']:.4f}; total {s['seconds']:.0f} s"
    if s["latency_ms"] is None:
        return alpha
    eff = "n/a" if s["efficiency"] is None else f"{s['efficiency']:.2f}"
    at = f"{s['speedup']:.2f}x at {thread_label([s['latency_threads']])}"
    if markdown:
        return f"Speed-up {at} on ONNX Runtime (efficiency {eff}); {alpha}"
    return f"speed-up {at} (ONNX Runtime; efficiency {eff} of the MACs reduction); {alpha}"


def int8_notes(summary: dict[str, Any]) -> list[str]:
    """Sentences on the INT8 model: what its quality numbers mean, and why it is slower than float if it is.

    Examples:
        >>> s = {"exports": {"int8": {"top1_agreement": 0.9875, "images": 160, "float_classes": 10,
        ...      "max_abs_error": 1.15, "max_abs_output": 16.6}}, "latency_ms": None}
        >>> for part in int8_notes(s)[0].split("; "):
        ...     print(part)
        INT8 quality: same top-1 class as the float model on 98.8% of 160 calibration images (10 distinct classes)
        its largest output error is 6.9% of the largest float output. A proxy for quantization damage, not an accuracy.
    """
    int8 = (summary.get("exports") or {}).get("int8")
    if not int8:
        return []
    agreement = int8.get("top1_agreement")
    if agreement is None:
        quality = "INT8 quality: no top-1 agreement (the output is not a class score vector)"
    else:
        classes = int8.get("float_classes")
        quality = (f"INT8 quality: same top-1 class as the float model on {agreement:.1%} of {int8['images']} "
                   f"calibration images ({classes} distinct class{'es' * (classes != 1)}"
                   + ("; with one class, agreement says nothing" if classes == 1 else "") + ")")
    notes = [f"{quality}; its largest output error is {_relative_error(int8):.1%} of the largest float output. "
             "A proxy for quantization damage, not an accuracy."]
    slower = _int8_slower(summary)
    if slower:
        notes.append(slower)
    return notes


def _int8_slower(s: dict[str, Any]) -> str | None:
    """The plain statement that INT8 is slower than float, and the likely reason on this CPU."""
    lat = _latencies(s)
    if lat is None or "pruned.int8" not in lat:
        return None
    fp, q = lat["pruned"]["median"], lat["pruned.int8"]["median"]
    if q <= fp:
        return None
    mmacs = s["macs"]["after"] / 1e6
    overhead = "the QuantizeLinear / DequantizeLinear steps around every operator"
    flags = _isa_flags(s)
    if flags is None:
        why = (f"INT8 pays off only on CPUs with 8-bit dot-product instructions (VNNI on x86, the dot-product "
               f"extension on ARM) and on models large enough that the faster arithmetic outweighs {overhead}; "
               f"this one has {mmacs:.2f} MMACs per image.")
    elif flags & INT8_DOT_FLAGS:
        why = (f"This CPU has 8-bit dot-product instructions ({', '.join(sorted(flags & INT8_DOT_FLAGS))}), so the "
               f"likely cause is the model's size: at {mmacs:.2f} MMACs per image, {overhead} cost more than the "
               "faster arithmetic saves.")
    else:
        why = ("This CPU has no 8-bit dot-product instructions (no AVX-512 VNNI or AVX-VNNI on x86, no dot-product "
               f"extension on ARM), so ONNX Runtime's INT8 kernels gain little over float while {overhead} add "
               "work.")
    return (f"INT8 is slower than float here: {q:.3f} vs {fp:.3f} ms at {thread_label([s['latency_threads']])}. "
            f"{why} Deploy the float model on such a CPU, or time the INT8 model on the target device.")


def _isa_flags(s: dict[str, Any]) -> set[str] | None:
    """The measuring CPU's ISA flags: recorded in the summary, else this machine's if it is the one that measured."""
    env = (s.get("benchmark") or {}).get("environment") or {}
    if env.get("isa_flags") is not None:
        return set(env["isa_flags"])
    if env.get("cpu") and env["cpu"] == cpu_name():
        return cpu_flags() or None
    return None


def summary_table(summary: dict[str, Any]) -> str:
    """The unpruned/pruned table of a `run_job` summary, as plain text, then its notes."""
    rows = _rows(summary)
    width = max(len(r[0]) for r in rows) + 2
    first, second = columns(summary)
    cols = max(14, len(second) + 2)
    lines = [f"{'':{width}}{first:>{cols}}{second:>{cols}}"]
    lines += [f"{a:{width}}{b:>{cols}}{c:>{cols}}" for a, b, c in rows]
    lines.append(_latency_line(summary, markdown=False))
    lines += int8_notes(summary)
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The unpruned/pruned table of a `run_job` summary, as Markdown (the body of ``report.md``)."""
    first, second = columns(summary)
    lines = [f"| | {first} | {second} |", "| --- | ---: | ---: |"]
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in _rows(summary)]
    line = _latency_line(summary, markdown=True)
    text = "\n".join(lines) + f"\n\n{line[0].upper()}{line[1:]}.\n"
    for note in int8_notes(summary):
        text += f"\n{note}\n"
    if summary["latency_ms"] is not None:
        text += "\n![latency of each model, with its speed-up over the unpruned one](latency.png)\n"
    return text


__all__ = ["INT8_DOT_FLAGS", "columns", "int8_notes", "summary_markdown", "summary_table", "thread_label"]
