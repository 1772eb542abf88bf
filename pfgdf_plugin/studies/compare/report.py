"""Rendering of a comparison report: the summary table (text or Markdown), its footer, and the accuracy plot."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from pfgdf_plugin._util import io as _io


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
    """Accuracy after BN recalibration and after fine-tuning vs MACs kept, one line per criterion; PNG, atomic.

    Points are means over seeds with min-max bars; PFGDF-based criteria are solid lines, the others dashed.

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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    base = report["unpruned"]
    for ax, key, title in ((axes[0], "acc_recal", "after BN recalibration"),
                           (axes[1], "acc_finetuned", "after fine-tuning")):
        for crit in report["config"]["criteria"]:
            pts = sorted((s["macs_kept"]["mean"], s[key]) for s in report["summary"]
                         if s["criterion"] == crit and key in s)
            if not pts:
                continue
            xs = [p[0] * 100 for p in pts]
            ys = [p[1]["mean"] * 100 for p in pts]
            err = [[(p[1]["mean"] - p[1]["min"]) * 100 for p in pts], [(p[1]["max"] - p[1]["mean"]) * 100 for p in pts]]
            style = "-" if crit.startswith("pfgdf") else "--"
            ax.errorbar(xs, ys, yerr=err, marker="o", linestyle=style, capsize=3, label=crit)
        ax.axhline(base["accuracy"] * 100, color="black", linewidth=1, linestyle=":", label="unpruned")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if "acc_finetuned" in base:
        axes[1].axhline(base["acc_finetuned"]["mean"] * 100, color="grey", linewidth=1, linestyle="-.",
                        label="unpruned + same fine-tune")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Criteria on {report['config']['data']} (mean, min-max over {len(report['config']['seeds'])} "
                 "seeds)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return _io.write_with(target, lambda fh: fh.write(buffer.getvalue()))

