"""Figures over a sweep's rows: the groups `prune()` left alone, targets out of reach, peak memory, two sweeps compared.

`left_alone` counts the groups left alone, `reason_category` sorts them into the categories of
`LEFT_ALONE_CATEGORIES` and `left_alone_summary` sums them; `sweep_figures` and `comparison` set a sweep against a
previous one (`previous_sweep` reads it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pfgdf_plugin._util import validate as check
from pfgdf_plugin.studies.coverage.result import CoverageReport, CoverageRow, Previous, by_family

LARGEST_MEMORY = 5
"""How many of the largest peak memories the page and the JSON summary list."""

NOT_LEFT_ALONE: frozenset[str] = frozenset({"classifier", "ignored_layers"})
"""The reasons ``PruneResult.ignored`` gives for layers protected on purpose (`pruning.checks.protected_layers`:
the classifier, the caller's ``ignored_layers``): listed there, but not groups `prune()` had to leave alone."""

SPLIT_CONCAT = "split/concat index mapping"
TRIAL = "breaks the model when pruned (trial)"
OTHER = "other"

LEFT_ALONE_CATEGORIES: tuple[tuple[str, str], ...] = (
    # After pruning, a split's part sizes no longer add up (Torch-Pruning's split mapping); found by the trial.
    ("split_with_sizes", SPLIT_CONCAT),
    # The failure `_compat.torch_pruning` documents for a split's index mapping, met while building the group.
    ("could not build its group (IndexError", SPLIT_CONCAT),
    ("Torch-Pruning could not build its group", "Torch-Pruning could not build the group"),
    # Now "dependency search ran away (over N steps or M members)"; older sweeps: "... did not finish within 1 s".
    ("dependency search", "dependency search ran away"),
    ("Torch-Pruning's check refused", "Torch-Pruning's check refused"),
    ("pruning it breaks the model", TRIAL),
    ("pruning it changes the shape of a model output", TRIAL),
)
"""(fragment of the reason, category), tried in order: a reason belongs to the category of the first fragment it
contains, else to `OTHER`. The fragments are the wordings of `pruning.groups.enumerate_groups` (building a group,
its search) and of `pruning.search` / `pruning.healing` (Torch-Pruning's check, the trial on a copy)."""

CATEGORIES: tuple[str, ...] = (*dict.fromkeys(c for _, c in LEFT_ALONE_CATEGORIES), OTHER)
"""Every category once, in table order, `OTHER` last."""


def left_alone(row: CoverageRow) -> dict[str, str]:
    """The groups `prune()` left alone on the row's model (root layer -> reason), without the layers protected on
    purpose (`NOT_LEFT_ALONE`: the classifier, ``ignored_layers``).

    Examples:
        >>> row = CoverageRow("resnet", "resnet18", "ok", ignored={"fc": "classifier", "layer1.0.conv1": "why"})
        >>> left_alone(row)
        {'layer1.0.conv1': 'why'}
    """
    return {name: why for name, why in row.ignored.items() if why not in NOT_LEFT_ALONE}


def reason_category(reason: str) -> str:
    """The category of a reason a group was left alone: that of the first `LEFT_ALONE_CATEGORIES` fragment in it.

    Examples:
        >>> reason_category("Torch-Pruning's check refused to prune this group")
        "Torch-Pruning's check refused"
        >>> reason_category("pruning it breaks the model (RuntimeError: split_with_sizes expects split_sizes ...)")
        'split/concat index mapping'
        >>> reason_category("pruning it breaks the model (RuntimeError: weight should contain 315 elements not 360)")
        'breaks the model when pruned (trial)'
        >>> reason_category("a reason no fragment matches")
        'other'
    """
    for fragment, category in LEFT_ALONE_CATEGORIES:
        if fragment in reason:
            return category
    return OTHER


def out_of_reach(row: CoverageRow) -> bool:
    """Whether ``target_macs`` was out of reach on the row's model: its floor was measured, or its reason says so.

    Examples:
        >>> out_of_reach(CoverageRow("vit", "vit_tiny", "fail", macs_floor=0.61))
        True
        >>> out_of_reach(CoverageRow("vit", "vit_tiny", "fail", reason="target_macs=0.5 out of reach: ..."))
        True
        >>> out_of_reach(CoverageRow("vit", "vit_tiny", "ok"))
        False
    """
    return row.macs_floor is not None or "out of reach" in row.reason


def left_alone_summary(rows: Iterable[CoverageRow], examples: int = 3) -> dict[str, Any]:
    """The groups left alone over a sweep: in total, per model, and per category of `LEFT_ALONE_CATEGORIES`.

    Args:
        rows: the sweep's rows (a row without a pruning result has none left alone).
        examples: how many models each category names (those with the most groups in it, then by name).

    Returns:
        ``models`` (rows), ``models_passing``, ``groups`` (left alone in all), ``models_with_any``,
        ``not_counted`` (the reasons of `NOT_LEFT_ALONE`), ``categories`` (every one of `CATEGORIES`, in order:
        ``groups``, ``models``, ``examples`` as ``{"model", "groups"}`` and its most frequent ``reason``) and
        ``per_model`` (model -> groups, only those with any, in the page's order).

    Examples:
        >>> rows = [CoverageRow("a", "a1", "ok", ignored={"head": "classifier", "x": "dependency search ran away"}),
        ...         CoverageRow("b", "b1", "fail")]
        >>> s = left_alone_summary(rows)
        >>> s["groups"], s["models_with_any"], s["models_passing"], s["per_model"]
        (1, 1, 1, {'a1': 1})
        >>> s["categories"]["dependency search ran away"]["examples"]
        [{'model': 'a1', 'groups': 1}]
    """
    rows = by_family(rows)
    per_model: dict[str, int] = {}
    by_category: dict[str, dict[str, int]] = {c: {} for c in CATEGORIES}  # category -> model -> groups
    reasons: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    for row in rows:
        name = row.model or row.family
        for why in left_alone(row).values():
            category = reason_category(why)
            per_model[name] = per_model.get(name, 0) + 1
            by_category[category][name] = by_category[category].get(name, 0) + 1
            reasons[category][why] += 1
    categories = {}
    for category, models in by_category.items():
        top = sorted(models.items(), key=lambda kv: (-kv[1], kv[0]))[:examples]
        common = reasons[category].most_common(1)
        categories[category] = {"groups": sum(models.values()), "models": len(models),
                                "examples": [{"model": m, "groups": n} for m, n in top],
                                "reason": common[0][0] if common else ""}
    return {"models": len(rows), "models_passing": sum(r.passed for r in rows), "groups": sum(per_model.values()),
            "models_with_any": len(per_model), "not_counted": sorted(NOT_LEFT_ALONE), "categories": categories,
            "per_model": per_model}


def sweep_figures(rows: Iterable[CoverageRow]) -> dict[str, int]:
    """The figures two sweeps are compared on: models, models passing, groups left alone, models with any, and
    models where ``target_macs`` is out of reach (`out_of_reach`).

    Examples:
        >>> sweep_figures([CoverageRow("a", "a1", "ok", ignored={"x": "dependency search ran away"}),
        ...                CoverageRow("b", "b1", "fail", macs_floor=0.7)])
        {'models': 2, 'models_passing': 1, 'groups_left_alone': 1, 'models_with_any': 1, 'models_out_of_reach': 1}
    """
    rows = list(rows)
    counts = [len(left_alone(r)) for r in rows]
    return {"models": len(rows), "models_passing": sum(r.passed for r in rows), "groups_left_alone": sum(counts),
            "models_with_any": sum(n > 0 for n in counts), "models_out_of_reach": sum(map(out_of_reach, rows))}


def previous_sweep(previous: Previous) -> tuple[list[CoverageRow], str, str]:
    """An older sweep's rows, date and command, from a `CoverageReport` or the parsed JSON of a ``coverage.json``.

    Raises:
        ValueError: ``previous`` is neither (nothing is written then).

    Examples:
        >>> rows, date, command = previous_sweep({"date": "2026-01-02T00:00:00+00:00", "rows": [
        ...     {"family": "a", "model": "a1", "status": "ok", "some_future_key": 1}]})
        >>> rows[0].model, date, command
        ('a1', '2026-01-02T00:00:00+00:00', '')
        >>> previous_sweep([1, 2])
        Traceback (most recent call last):
        ...
        ValueError: previous must be a CoverageReport or the parsed JSON of a coverage.json (a dict with a list of \
rows, each with family, model and status), got 'list'
    """
    if isinstance(previous, CoverageReport):
        return list(previous.rows), previous.date, str(previous.settings.get("command", ""))
    expected = ("a CoverageReport or the parsed JSON of a coverage.json (a dict with a list of rows, each with family, "
                "model and status)")
    if not isinstance(previous, Mapping) or not isinstance(previous.get("rows"), list):
        raise check.bad("previous", expected, type(previous).__name__)
    for i, data in enumerate(previous["rows"]):
        missing = [k for k in ("family", "model", "status") if not isinstance(data, Mapping) or k not in data]
        if missing:
            raise check.bad("previous", expected, f"rows[{i}] without {', '.join(missing)}")
    rows = [CoverageRow.from_dict(data) for data in previous["rows"]]
    settings = previous.get("settings")
    command = settings.get("command", "") if isinstance(settings, Mapping) else ""
    return rows, str(previous.get("date", "?")), str(command)


def comparison(report: CoverageReport, previous: Previous) -> dict[str, Any]:
    """This sweep against an older one: `sweep_figures` of each, groups left alone per category of each, and the
    older sweep's date and command.

    Raises:
        ValueError: ``previous`` is neither a `CoverageReport` nor a ``coverage.json``'s parsed JSON.
    """
    rows, date, command = previous_sweep(previous)
    before, after = left_alone_summary(rows), left_alone_summary(report.rows)
    return {"previous_date": date, "previous_command": command, "before": sweep_figures(rows),
            "after": sweep_figures(report.rows),
            "categories": {c: {"before": before["categories"][c]["groups"], "after": after["categories"][c]["groups"]}
                           for c in CATEGORIES}}


def largest_memory(rows: Iterable[CoverageRow], n: int = LARGEST_MEMORY) -> list[CoverageRow]:
    """The ``n`` rows with the largest peak resident memory (rows without one left out), largest first."""
    return sorted((r for r in rows if r.peak_rss_gb is not None), key=lambda r: (-r.peak_rss_gb, r.model))[:n]
