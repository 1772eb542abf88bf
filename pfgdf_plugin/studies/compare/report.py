"""Rendering of a comparison report: the summary table (text or Markdown), its footer, the accuracy plot, and
`write_outputs`, which writes them in an order that loses nothing to a plotting error."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pfgdf_plugin._util import io as _io

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OUTPUTS: tuple[str, ...] = ("compare.json", "compare.md", "compare.png")
"""The files `write_outputs` writes, in its order: the report, the table, the plot."""


def _cell(s: dict[str, float] | None) -> str:
    """An accuracy summary in %: mean [min, max]."""
    if s is None:
        return "failed"
    return f"{s['mean'] * 100:5.1f} [{s['min'] * 100:.1f}, {s['max'] * 100:.1f}]"


def table(report: dict[str, Any], markdown: bool = False) -> str:
    """The summary as plain text (or a Markdown table): accuracies in %, mean [min, max] over seeds.

    Rows are sorted by target (largest first), then by fine-tuned accuracy. With latency in the report, two more
    columns: median latency at 1 thread (mean over seeds) and the speed-up over the unpruned model.

    Examples:
        >>> acc = {"mean": 0.9, "min": 0.85, "max": 0.95}
        >>> cell = {"criterion": "l1", "target": 0.5, "macs_kept": {"mean": 0.5}, "params_kept": {"mean": 0.4},
        ...         "acc_stale": acc, "acc_recal": acc, "acc_finetuned": acc}
        >>> print(table({"unpruned": {"accuracy": 0.98}, "summary": [cell]}, markdown=True))
        | criterion | target | MACs kept % | params kept % | stale BN acc % | recal BN acc % | fine-tuned acc % |
        |---|---|---|---|---|---|---|
        | unpruned (anchor) | 1.00 | 100.0 | 100.0 | 98.0 | 98.0 | 98.0 |
        | l1 | 0.50 | 50.0 | 40.0 |  90.0 [85.0, 95.0] |  90.0 [85.0, 95.0] |  90.0 [85.0, 95.0] |
    """
    base = report["unpruned"]
    has_latency = "latency_ms" in base
    head = ["criterion", "target", "MACs kept %", "params kept %", "stale BN acc %", "recal BN acc %",
            "fine-tuned acc %"] + (["latency ms (1 thread)", "speed-up"] if has_latency else [])
    acc = f"{base['accuracy'] * 100:.1f}"
    rows = [["unpruned (anchor)", "1.00", "100.0", "100.0", acc, acc, acc]
            + ([f"{base['latency_ms']:.3f}", "1.00x"] if has_latency else [])]
    if "acc_finetuned" in base:
        rows.append(["unpruned + same fine-tune", "1.00", "100.0", "100.0", "-", "-", _cell(base["acc_finetuned"])]
                    + (["-", "-"] if has_latency else []))
    for s in sorted(report["summary"], key=lambda r: (-r["target"], -(r.get("acc_finetuned") or {}).get("mean", -1))):
        row = [s["criterion"], f"{s['target']:.2f}"] + [
            f"{s[k]['mean'] * 100:.1f}" if k in s else "failed" for k in ("macs_kept", "params_kept")
        ] + [_cell(s.get(k)) for k in ("acc_stale", "acc_recal", "acc_finetuned")]
        if has_latency:
            row += [f"{s['latency_ms']['mean']:.3f}" if "latency_ms" in s else "-",
                    f"{s['speedup']['mean']:.2f}x" if "speedup" in s else "-"]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return "\n".join(lines + [fmt.format(*r) for r in rows])


def footer(report: dict[str, Any]) -> str:
    """One paragraph saying what the numbers in `table` are: seeds, data, budget, latency protocol, time."""
    c, base = report["config"], report["unpruned"]
    text = (f"Mean [min, max] over seeds {c['seeds']}; {c['data']}: {c['train_images']} training / "
            f"{c['test_images']} test images; unpruned SmallCNN (width {c['width']}): {base['macs'] / 1e6:.2f} MMACs, "
            f"{base['params']} params, trained {c['train_epochs']} epoch(s). Every pruned model: BN recalibration "
            f"on {c['recalibration_batches']} batches, then {c['finetune_epochs']} fine-tuning epoch(s) at lr "
            f"{c['finetune_lr']} (best test accuracy over the epochs).")
    if c.get("round_to"):
        text += f" Pruned channel counts rounded up to multiples of {c['round_to']}."
    lat = report.get("latency")
    if lat:
        text += (f" Latency: ONNX Runtime CPU, 1 intra-op thread, median of {lat['runs']} single-sample runs after "
                 f"{lat['warmup']} warm-up, all models interleaved; mean over seeds.")
        if any(r.get("speedup", 1.0) < 1.0 for r in report["runs"]):
            text += (" A speed-up below 1.00x: fewer MACs but slower; see the latency notes in the JSON report "
                     "(channel counts off ONNX Runtime's conv blocks are a common cause).")
    failed = sum("error" in r for r in report["runs"])
    if failed:
        text += f" {failed} cell(s) FAILED (see the JSON report)."
    return text + f" Total {report['seconds']:.0f} s."


def plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """`figure` written to ``path`` as a PNG, atomically.

    Raises:
        ValueError: ``path`` does not end in ``.png``.

    Examples:
        >>> import tempfile, os
        >>> acc = {"mean": 0.9, "min": 0.85, "max": 0.95}
        >>> cell = {"criterion": "l1", "target": 0.5, "macs_kept": {"mean": 0.5}, "acc_recal": acc,
        ...         "acc_finetuned": acc}
        >>> report = {"config": {"criteria": ["l1"], "data": "digits", "seeds": [0, 1]}, "unpruned": {"accuracy": 0.98},
        ...           "summary": [cell]}
        >>> plot(report, os.path.join(tempfile.mkdtemp(), "c.png")).read_bytes()[:4]
        b'\\x89PNG'
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"plot path must end in .png, got {str(target)!r}")
    import matplotlib.pyplot as plt

    fig = figure(report)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return _io.write_with(target, lambda fh: fh.write(buffer.getvalue()))


def figure(report: dict[str, Any]) -> Figure:
    """Accuracy after BN recalibration and after fine-tuning, two panels, as a matplotlib figure.

    Means over seeds with min-max bars. With one MACs target (``--quick``), one row per criterion, best fine-tuned
    accuracy on top; with several, accuracy against MACs kept, one line per criterion. PFGDF-based criteria are
    drawn in blues, the others in oranges; the unpruned anchors are vertical (horizontal) lines.

    Examples:
        >>> acc = {"mean": 0.9, "min": 0.85, "max": 0.95}
        >>> rows = [{"criterion": c, "target": 0.5, "macs_kept": {"mean": 0.5}, "acc_recal": acc,
        ...          "acc_finetuned": acc | {"mean": m}} for c, m in (("l1", 0.9), ("pfgdf-l1", 0.92))]
        >>> report = {"config": {"criteria": ["l1", "pfgdf-l1"], "data": "digits", "seeds": [0, 1]},
        ...           "unpruned": {"accuracy": 0.98}, "summary": rows}
        >>> [t.get_text() for t in figure(report).axes[0].get_yticklabels()]  # best fine-tuned first
        ['pfgdf-l1', 'l1']
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    crits = [c for c in report["config"]["criteria"] if any(s["criterion"] == c for s in report["summary"])]
    targets = sorted({s["target"] for s in report["summary"]})
    seeds = len(report["config"]["seeds"])
    if len(targets) == 1:
        crits.sort(key=lambda c: -_row(report, c, targets[0]).get("acc_finetuned", {}).get("mean", -1.0))
        fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + 0.32 * len(crits)), sharey=True)
        for ax, key, title in zip(axes, _PANELS, _TITLES, strict=True):
            _dots(ax, report, crits, targets[0], key, title)
        fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7)
        title = f"Criteria on {report['config']['data']} at {targets[0]:.0%} of MACs"
    else:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        for ax, key, title in zip(axes, _PANELS, _TITLES, strict=True):
            _lines(ax, report, crits, key, title)
        fig.legend(*axes[1].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.suptitle(f"{title if len(targets) == 1 else 'Criteria on ' + report['config']['data']} "
                 f"(mean, bar: min-max over {seeds} seed{'s' * (seeds > 1)})", fontsize=10)
    # Room for the legend: below the rows of one target, right of the lines of several.
    fig.tight_layout(rect=(0, 0, 0.86, 1) if len(targets) > 1 else (0, 0.5 / fig.get_figheight(), 1, 1))
    return fig


_PANELS = ("acc_recal", "acc_finetuned")
_TITLES = ("after BN recalibration", "after fine-tuning")


def _row(report: dict[str, Any], crit: str, target: float) -> dict[str, Any]:
    return next((s for s in report["summary"] if s["criterion"] == crit and s["target"] == target), {})


def _colour(i: int, crit: str) -> Any:
    """PFGDF-based criteria in blues, the others in oranges; ``i`` picks the shade (one per line)."""
    from matplotlib import colormaps

    return colormaps["Blues" if crit.startswith("pfgdf") else "Oranges"](0.45 + 0.1 * (i % 6))


def _spread(s: dict[str, float]) -> tuple[float, list[float], list[float]]:
    """Mean, and the bar below and above it, in %; clamped at 0 for means rounded outside [min, max]."""
    return s["mean"] * 100, [max(s["mean"] - s["min"], 0.0) * 100], [max(s["max"] - s["mean"], 0.0) * 100]


def _anchors(ax: Axes, report: dict[str, Any], key: str, vertical: bool) -> None:
    base = report["unpruned"]
    line = ax.axvline if vertical else ax.axhline
    line(base["accuracy"] * 100, color="black", linewidth=1, linestyle=":", label="unpruned")
    if key == "acc_finetuned" and base.get("acc_finetuned"):
        line(base["acc_finetuned"]["mean"] * 100, color="grey", linewidth=1, linestyle="-.",
             label="unpruned + same fine-tune")


def _dots(ax: Axes, report: dict[str, Any], crits: list[str], target: float, key: str, title: str) -> None:
    """One target: a row per criterion (the first on top), its mean and min-max bar."""
    for i, crit in enumerate(crits):
        row = _row(report, crit, target)
        if key in row:
            mean, lo, hi = _spread(row[key])
            ax.errorbar([mean], [i], xerr=[lo, hi], fmt="o", capsize=3, color=_colour(2, crit))
    _anchors(ax, report, key, vertical=True)
    ax.set_yticks(range(len(crits)), crits, fontsize=8)
    ax.set_ylim(len(crits) - 0.5, -0.5)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _lines(ax: Axes, report: dict[str, Any], crits: list[str], key: str, title: str) -> None:
    """Several targets: accuracy against MACs kept, a line per criterion (PFGDF-based solid, others dashed)."""
    markers = "osD^v<>"
    for i, crit in enumerate(crits):
        pts = sorted((s["macs_kept"]["mean"], s[key]) for s in report["summary"] if s["criterion"] == crit and key in s)
        if not pts:
            continue
        spreads = [_spread(p[1]) for p in pts]
        ax.errorbar([p[0] * 100 for p in pts], [m for m, _, _ in spreads],
                    yerr=[[lo[0] for _, lo, _ in spreads], [hi[0] for _, _, hi in spreads]],
                    marker=markers[i % len(markers)], linestyle="-" if crit.startswith("pfgdf") else "--",
                    capsize=3, color=_colour(i, crit), label=crit)
    _anchors(ax, report, key, vertical=False)
    ax.set_xlabel("MACs kept (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def markdown(report: dict[str, Any]) -> str:
    """``compare.md``: a title, the Markdown `table` and the `footer` (see `write_outputs` for an example)."""
    return "# Criteria comparison\n\n" + table(report, markdown=True) + "\n\n" + footer(report) + "\n"


def write_outputs(report: dict[str, Any], folder: str | os.PathLike) -> tuple[list[Path], str | None]:
    """Write `OUTPUTS` to ``folder`` (created if missing), each atomically: JSON and Markdown first, then the plot.

    A plot that fails is reported, not raised: the numbers it would show are already on disk.

    Returns:
        The paths written, and the plot's error as ``"<type>: <message>"`` (``None`` when it was written).

    Examples:
        >>> import tempfile
        >>> acc = {"mean": 0.9, "min": 0.85, "max": 0.95}
        >>> cell = {"criterion": "l1", "target": 0.5, "macs_kept": {"mean": 0.5}, "params_kept": {"mean": 0.4},
        ...         "acc_stale": acc, "acc_recal": acc, "acc_finetuned": acc}
        >>> report = {"config": {"criteria": ["l1"], "data": "digits", "seeds": [0, 1], "train_images": 8,
        ...           "test_images": 2, "width": 8, "train_epochs": 1, "recalibration_batches": 1,
        ...           "finetune_epochs": 1, "finetune_lr": 0.01}, "unpruned": {"accuracy": 0.98, "macs": 1e6,
        ...           "params": 10}, "summary": [cell], "runs": [], "seconds": 1.0}
        >>> paths, error = write_outputs(report, tempfile.mkdtemp())
        >>> [p.name for p in paths], error
        (['compare.json', 'compare.md', 'compare.png'], None)
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "compare.png").mkdir()  # the plot cannot be written; the data files still are
        >>> paths, error = write_outputs(report, folder)
        >>> [p.name for p in paths], error.split(":")[0]
        (['compare.json', 'compare.md'], 'IsADirectoryError')
    """
    out = Path(folder)
    paths = [_io.write_text(out / OUTPUTS[0], json.dumps(report, indent=2) + "\n"),
             _io.write_text(out / OUTPUTS[1], markdown(report))]
    try:
        paths.append(plot(report, out / OUTPUTS[2]))
    except Exception as exc:  # matplotlib's errors are many and varied; the data is safe either way
        return paths, f"{type(exc).__name__}: {exc}"
    return paths, None
