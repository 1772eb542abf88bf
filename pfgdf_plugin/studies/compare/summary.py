"""Statistics over seeds: one summary row per (criterion, target) from the comparison's cells."""

from __future__ import annotations

import statistics
from typing import Any

SUMMARY_KEYS: tuple[str, ...] = ("macs_kept", "params_kept", "acc_stale", "acc_recal", "acc_finetuned",
                                 "latency_ms", "speedup")
"""The cell values summarised over seeds."""


def stats(values: list[float]) -> dict[str, float]:
    """Mean, min, max and sample standard deviation (0 for one value) of ``values``; min <= mean <= max always.

    Examples:
        >>> stats([1.0, 3.0])
        {'mean': 2.0, 'min': 1.0, 'max': 3.0, 'std': 1.4142135623730951}
        >>> stats([0.003] * 3)["mean"]  # fmean gives 0.0030000000000000005: rounding, outside [min, max]
        0.003
    """
    lo, hi = min(values), max(values)
    # The rounded mean of equal values can land one ulp outside them; plots draw mean - min as an error bar.
    mean = min(max(statistics.fmean(values), lo), hi)
    return {"mean": mean, "min": lo, "max": hi, "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (criterion, target): mean / min / max / std over seeds of MACs and params kept, accuracies, latency.

    Cells with an ``"error"`` are counted as ``failed`` and left out of the statistics.

    Examples:
        >>> cell = {"criterion": "l1", "target": 0.5, "macs_kept": 0.5, "params_kept": 0.4, "acc_stale": 0.1,
        ...         "acc_recal": 0.8}
        >>> rows = summarise([cell | {"seed": 0, "acc_finetuned": 0.9}, cell | {"seed": 1, "acc_finetuned": 0.95}])
        >>> row = rows[0]
        >>> row["seeds"], round(row["acc_finetuned"]["mean"], 3)
        (2, 0.925)
    """
    keys: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        keys.setdefault((r["criterion"], r["target"]), []).append(r)
    out = []
    for (crit, target), rows in keys.items():
        ok = [r for r in rows if "error" not in r]
        row: dict[str, Any] = {"criterion": crit, "target": target, "seeds": len(ok), "failed": len(rows) - len(ok)}
        for k in SUMMARY_KEYS:
            values = [r[k] for r in ok if r.get(k) is not None]
            if values:
                row[k] = stats(values)
        out.append(row)
    return out
