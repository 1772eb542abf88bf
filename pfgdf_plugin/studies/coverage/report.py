"""The sweep's results (`CoverageRow`, `CoverageReport`) and their renderings: summary, JSON, Markdown page.

The dataclasses hold data; `render_summary`, `render_json` and `render_markdown` render it (the methods
`CoverageReport.summary`, `CoverageReport.to_json` and `CoverageReport.to_markdown` call them). The groups
`prune()` left alone are counted by `left_alone`, sorted into the categories of `LEFT_ALONE_CATEGORIES` by
`reason_category` and summed by `left_alone_summary`; `sweep_figures` and `comparison` set a sweep against a
previous one (``previous=`` of `render_json` and `render_markdown`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin.studies.coverage.cases import (
    CONSTANT_OUTPUT,
    DEFAULT_MEMORY_LIMIT_GB,
    DEFAULT_TIMEOUT,
    MACS_EXCEPTIONS,
    MACS_KEPT_LIMIT,
    NUM_CLASSES,
    TARGET_MACS,
)

SUCCESS_GOAL = 0.95
STATUSES: tuple[str, ...] = ("ok", "exempt", "fail", "exception", "timeout")
PASSING: tuple[str, ...] = ("ok", "exempt")
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


@dataclass
class CoverageRow:
    """One model's result.

    ``macs_kept`` / ``params_kept`` are measured on the pruned model; ``onnx_error`` is ONNX Runtime's max abs
    error / max abs output against PyTorch; ``seconds`` is the wall time of the model's process and
    ``stage_seconds`` splits it (select, create, prune, check, export); ``output_spread`` /
    ``output_spread_before`` is how much the pruned / unpruned model's output differs between two random inputs,
    relative to its size (near 0: a constant output, which makes the ONNX comparison weak); ``redrawn`` names the
    all-zero weight tensors re-drawn before pruning; ``ignored`` is ``PruneResult.ignored`` (layers prune() left
    alone, with the reason); ``macs_floor`` is the smallest MACs fraction the structure
    reaches, set when ``target_macs`` was out of reach; ``problems`` lists every criterion not met, ``reason``
    the first of them or the exception.
    """

    family: str
    model: str
    status: str
    reason: str = ""
    input_size: list[int] | None = None
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    variants: int | None = None
    output_shape: list[int] | None = None
    output_spread: float | None = None
    output_spread_before: float | None = None
    redrawn: list[str] = field(default_factory=list)
    macs_before: float | None = None
    macs_after: float | None = None
    macs_kept: float | None = None
    params_before: int | None = None
    params_after: int | None = None
    params_kept: float | None = None
    macs_floor: float | None = None
    target_met: bool | None = None
    groups: int | None = None
    search_steps: int | None = None
    corrections: int | None = None
    onnx_error: float | None = None
    onnx_abs_error: float | None = None
    float64_error: float | None = None
    exporter: str | None = None
    ignored: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: float | None = None

    @property
    def passed(self) -> bool:
        """Status ``ok`` or ``exempt``."""
        return self.status in PASSING

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoverageRow:
        """A row from `to_dict`'s output; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class CoverageReport:
    """The sweep's rows and how they were made. ``date`` is UTC; ``settings`` holds the sweep's arguments."""

    rows: list[CoverageRow]
    date: str
    seconds: float
    environment: dict[str, Any]
    settings: dict[str, Any]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.rows)

    @property
    def success_rate(self) -> float:
        """Share of rows with status ``ok`` or ``exempt``."""
        return self.passed / len(self.rows) if self.rows else 0.0

    def counts(self) -> dict[str, int]:
        """Rows per status, every status listed."""
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}

    def slowest(self, n: int = 10) -> list[CoverageRow]:
        return sorted(self.rows, key=lambda r: (-r.seconds, r.model))[:n]

    def summary(self) -> str:
        """A few lines: success rate against the goal, statuses, total time, the slowest ten, the failures."""
        return render_summary(self)

    def to_dict(self, previous: Previous | None = None) -> dict[str, Any]:
        return report_dict(self, previous)

    def to_json(self, path: str | os.PathLike | None = None, previous: Previous | None = None) -> str:
        """The report as JSON text (compared with ``previous`` when given); also written atomically to ``path``."""
        return render_json(self, path, previous)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CoverageReport:
        """Read a report written by `to_json` (to regenerate the Markdown page without a new sweep)."""
        data = json.loads(Path(path).read_text())
        return cls(rows=[CoverageRow.from_dict(r) for r in data["rows"]], date=data["date"],
                   seconds=data["seconds"], environment=data["environment"], settings=data["settings"])

    def to_markdown(self, path: str | os.PathLike | None = None, previous: Previous | None = None) -> str:
        """A complete documentation page: criteria, how it was run, versions, results; written to ``path``.
        With ``previous`` (an older report, or its parsed JSON) it also compares the two sweeps."""
        return render_markdown(self, path, previous)


Previous = CoverageReport | Mapping[str, Any]
"""An older sweep to compare with: a `CoverageReport`, or the parsed JSON of its ``coverage.json``."""


def by_family(rows: Iterable[CoverageRow]) -> list[CoverageRow]:
    """Rows sorted by family, then model: the order of the JSON and the page."""
    return sorted(rows, key=lambda r: (r.family, r.model))


# ------------------------------------------------------------------------ groups left alone, two sweeps compared


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


# ------------------------------------------------------------------------------------------ summary, JSON


def render_summary(report: CoverageReport) -> str:
    """A few lines: success rate against the goal, statuses, total time, the slowest ten, the failures."""
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    verdict = "meets" if report.success_rate >= SUCCESS_GOAL else "below"
    lines = [
        f"coverage: {report.passed}/{len(report.rows)} passed ({report.success_rate:.1%}; {verdict} the "
        f"{SUCCESS_GOAL:.0%} goal): {counts}",
        f"total time {_duration(report.seconds)}; slowest: "
        + ", ".join(f"{r.model or r.family} {r.seconds:.0f} s" for r in report.slowest()),
    ]
    alone = left_alone_summary(report.rows)
    largest = largest_memory(report.rows, 1)
    lines.append(f"left alone: {alone['groups']} group(s) besides the classifier in {alone['models_with_any']} of "
                 f"{alone['models']} models"
                 + (f"; largest peak memory {largest[0].peak_rss_gb:.1f} GB ({largest[0].model})" if largest else ""))
    lines += [f"  {r.status:<9} {r.family}/{r.model}: {r.reason}" for r in by_family(report.rows) if not r.passed]
    return "\n".join(lines)


def report_dict(report: CoverageReport, previous: Previous | None = None) -> dict[str, Any]:
    """The JSON document: the report, its summary, the documented exceptions and every row.

    The summary holds ``left_alone`` (`left_alone_summary`), ``out_of_reach`` (the models where ``target_macs``
    is out of reach), ``largest_memory`` (peak resident GB, largest first) and, with ``previous``,
    ``comparison`` (`comparison`).

    Raises:
        ValueError: a ``previous`` that is neither a `CoverageReport` nor a ``coverage.json``'s parsed JSON.
    """
    summary = {"rows": len(report.rows), "passed": report.passed, "success_rate": report.success_rate,
               "goal": SUCCESS_GOAL, "counts": report.counts(),
               "slowest": [{"model": r.model, "family": r.family, "seconds": r.seconds} for r in report.slowest()],
               "left_alone": left_alone_summary(report.rows),
               "out_of_reach": [r.model or r.family for r in by_family(report.rows) if out_of_reach(r)],
               "largest_memory": [{"model": r.model, "family": r.family, "peak_rss_gb": r.peak_rss_gb}
                                  for r in largest_memory(report.rows)]}
    if previous is not None:
        summary["comparison"] = comparison(report, previous)
    return {
        "date": report.date,
        "seconds": report.seconds,
        "environment": report.environment,
        "settings": report.settings,
        "summary": summary,
        "macs_exceptions": {k: asdict(v) for k, v in MACS_EXCEPTIONS.items()},
        "rows": [r.to_dict() for r in by_family(report.rows)],
    }


def render_json(report: CoverageReport, path: str | os.PathLike | None = None,
                previous: Previous | None = None) -> str:
    """The report as JSON text, compared with ``previous`` (an older report or its parsed JSON) when given; also
    written atomically to ``path`` when given (after ``previous`` is checked)."""
    text = json.dumps(report_dict(report, previous), indent=2)
    if path is not None:
        _io.write_text(path, text + "\n")
    return text


# --------------------------------------------------------------------------------------------- Markdown


def render_markdown(report: CoverageReport, path: str | os.PathLike | None = None,
                    previous: Previous | None = None) -> str:
    """A complete documentation page: criteria, how it was run, versions, the groups left alone, peak memory,
    results; written to ``path``.

    Args:
        report: the sweep's results.
        path: where to write the page atomically; ``None`` to only return it.
        previous: an older sweep (a `CoverageReport`, or the parsed JSON of its ``coverage.json``): the page then
            shows, before -> after, the groups left alone, the models with any, the models passing and the models
            where ``target_macs`` is out of reach.

    Returns:
        The page's Markdown.

    Raises:
        ValueError: ``previous`` is neither a `CoverageReport` nor a ``coverage.json``'s parsed JSON (nothing is
            written).
    """
    compared = None if previous is None else comparison(report, previous)
    lines = [*_markdown_header(report), *_markdown_criteria(report.settings), *_markdown_exceptions(),
             *_markdown_left_alone(report, compared), *_markdown_comparison(compared), *_markdown_memory(report),
             *_markdown_slowest(report), *_markdown_results(report)]
    text = "\n".join(lines)
    if path is not None:
        _io.write_text(path, text)
    return text


def _markdown_header(report: CoverageReport) -> list[str]:
    """Title, result, command, versions and machine."""
    env, st = report.environment, report.settings
    v = env.get("versions", {})
    versions = ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "timm", "torch_pruning", "onnx",
                                                "onnxruntime", "pfgdf_plugin") if k in v)
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    verdict = "meets" if report.success_rate >= SUCCESS_GOAL else "is below"
    return [
        "# Supported architectures",
        "",
        f"Measured on {report.date[:10]} by `{st.get('command', 'pfgdf coverage')}`: **{report.passed} of "
        f"{len(report.rows)}** models pass (**{report.success_rate:.1%}**; {verdict} the {SUCCESS_GOAL:.0%} "
        f"goal): {counts}. Total time {_duration(report.seconds)}.",
        "",
        f"Versions: {versions}. Machine: {env.get('cpu', '?')} ({env.get('machine', '?')}), "
        f"{env.get('cpus_available', '?')} CPUs available, {st.get('threads')} thread(s) per model, "
        f"{st.get('jobs')} model(s) at a time.",
        "",
    ]


def _markdown_criteria(st: Mapping[str, Any]) -> list[str]:
    """The "What is checked" section: model choice, the four criteria, the limits."""
    return [
        "## What is checked",
        "",
        f"One model per timm model module (`timm.list_modules()`): the variant with the fewest parameters "
        f"(counted on the meta device; `test_*` fixtures left out; modules with any image classifier use "
        f"only those), random weights (`torch.manual_seed(0)`, `num_classes={NUM_CLASSES}`), eval mode, "
        f"batch 1 at the model's default input size (`pretrained_cfg[\"input_size\"]`) unless the row says "
        "otherwise. BatchNorm running statistics are estimated on 4 random inputs first: with untrained "
        "statistics the activations of many random networks shrink to nothing and the output is the "
        "classifier's bias whatever the input, which no output or ONNX check can see through; for the same "
        "reason weight tensors timm initialises to exactly zero (some classifier heads) are re-drawn from "
        "N(0, 0.02²). "
        f"`prune(model, x, target_macs={st.get('target_macs', TARGET_MACS):g})`, then a model "
        "passes when all of these hold:",
        "",
        "1. the pruned model runs on two fresh random inputs and its output shape is unchanged (and, when the "
        "unpruned model's output depends on the input, the pruned one's still does);",
        f"2. MACs drop by at least {1 - MACS_KEPT_LIMIT:.0%} (kept <= {MACS_KEPT_LIMIT:.0%}), or its family "
        "has a documented, measured exception below (status `exempt`);",
        "3. it exports to ONNX (torch.export-based exporter, else the TorchScript one) and ONNX Runtime "
        "(CPU) matches PyTorch: max abs error / max abs output <= 1e-4 over 4 random inputs;",
        "4. the plan is consistent: every group keeps 1 to all of its channels; every reported layer has "
        "the reported channels in the pruned model; every conv / linear / norm layer's tensors match its "
        "declared channels; layers left alone kept their outputs; MACs and parameters re-counted on the "
        "pruned model equal the reported ones.",
        "",
        f"Each model runs in its own process, limited to {st.get('timeout', DEFAULT_TIMEOUT):g} s "
        f"(status `timeout`) and {st.get('memory_limit_gb', DEFAULT_MEMORY_LIMIT_GB):g} GB resident memory. "
        "`exception`: a stage raised (the reason names the stage) or the process died; `fail`: every stage "
        "ran and a criterion is not met. Seconds are wall time of the whole process (start, model "
        "selection and creation, pruning, checks, ONNX export and parity) on a shared machine.",
        "",
    ]


def _markdown_exceptions() -> list[str]:
    lines = ["## Documented exceptions to criterion 2", ""]
    if MACS_EXCEPTIONS:
        lines += ["| family | most MACs kept | why |", "| --- | ---: | --- |"]
        lines += [f"| `{k}` | {e.max_kept:.1%} | {_cell(e.why)} |" for k, e in sorted(MACS_EXCEPTIONS.items())]
    else:
        lines.append("None.")
    return lines


def _markdown_left_alone(report: CoverageReport, compared: dict[str, Any] | None) -> list[str]:
    """The "Groups left alone" section: totals, then the categories with counts and example models."""
    s = left_alone_summary(report.rows)
    lines = [
        "",
        "## Groups left alone",
        "",
        "Groups `prune()` did not prune although they are not the classifier (nor layers passed in "
        "`ignored_layers`): it could not build them, their dependency search ran away, Torch-Pruning's check "
        "refused them, or pruning them broke the model on a trial copy. Measured: "
        f"**{s['groups']}** group(s) left alone in **{s['models_with_any']} of {s['models']}** models "
        f"({s['models_passing']} models pass); the *left alone* column of the results gives each model's count, "
        "the JSON (`ignored`) each group with its reason.",
        "",
    ]
    used = [c for c in CATEGORIES if s["categories"][c]["groups"]
            or (compared is not None and compared["categories"][c]["before"])]
    if not used:
        return [*lines, "None."]
    before = compared is not None
    lines += ["| why | groups | " + ("before | " if before else "") + "models | examples | most frequent reason |",
              "| --- | ---: | " + ("---: | " if before else "") + "---: | --- | --- |"]
    for c in sorted(used, key=lambda c: (-s["categories"][c]["groups"], CATEGORIES.index(c))):
        cat = s["categories"][c]
        examples = ", ".join(f"`{e['model']}` ({e['groups']})" for e in cat["examples"])
        was = f"{compared['categories'][c]['before']} | " if before else ""
        lines.append(f"| {c} | {cat['groups']} | {was}{cat['models']} | {examples} | {_cell(cat['reason'], 120)} |")
    was = f"**{compared['before']['groups_left_alone']}** | " if before else ""
    lines += [f"| **total** | **{s['groups']}** | {was}**{s['models_with_any']}** |  |  |", "",
              "A reason's category is that of the first of these fragments it contains (else *other*): "
              + "; ".join(f"\"{fragment}\" -> {c}" for fragment, c in LEFT_ALONE_CATEGORIES) + "."]
    return lines


COMPARED: tuple[tuple[str, str], ...] = (
    ("groups_left_alone", "groups left alone (besides the classifier)"),
    ("models_with_any", "models with any group left alone"),
    ("models_passing", "models passing"),
    ("models_out_of_reach", "models that cannot reach target_macs"),
)
"""The figures "Compared with the previous sweep" shows: (key of `sweep_figures`, label)."""


def _markdown_comparison(compared: dict[str, Any] | None) -> list[str]:
    """The "Compared with the previous sweep" section: before -> after for the figures of `COMPARED`."""
    if compared is None:
        return []
    before, after = compared["before"], compared["after"]
    command = f" (`{compared['previous_command']}`)" if compared["previous_command"] else ""
    lines = ["", "## Compared with the previous sweep", "",
             f"Before: the sweep of {compared['previous_date'][:10]}{command}, {before['models']} models; after: "
             f"this one, {after['models']} models. Models where `target_macs` is out of reach: a measured floor "
             "(`macs_floor`) or a reason that says so.", "",
             "| | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for key, label in COMPARED:
        lines.append(f"| {label} | {before[key]} | {after[key]} | {after[key] - before[key]:+d} |")
    return lines


def _markdown_memory(report: CoverageReport) -> list[str]:
    """The "Peak memory" section: the largest peak resident memories."""
    largest = largest_memory(report.rows)
    lines = ["", "## Peak memory", "",
             "Peak resident memory of a model's process (*peak GB* in the results; a process stopped at a limit "
             "reports none, its reason says how much it held)"]
    if not largest:
        return [*lines[:-1], lines[-1] + ": none reported."]
    lines[-1] += f", the largest {len(largest)}:"
    lines += [""] + [f"- `{r.model or r.family}` (`{r.family}`): {r.peak_rss_gb:.1f} GB, {r.status}" for r in largest]
    return lines


def _markdown_slowest(report: CoverageReport) -> list[str]:
    lines = ["", "## Slowest ten", "", "| model | family | seconds | longest stage | status |",
             "| --- | --- | ---: | --- | --- |"]
    lines += [f"| `{r.model or '?'}` | `{r.family}` | {r.seconds:.1f} | {_longest_stage(r)} | {r.status} |"
              for r in report.slowest()]
    return lines


def _markdown_results(report: CoverageReport) -> list[str]:
    lines = [
        "",
        "## Results",
        "",
        "*left alone*: groups `prune()` did not prune besides the classifier (see Groups left alone); the JSON has "
        "each one with the reason. *peak GB*: the peak resident memory of the model's process.",
        "",
        "| family | model | input | MACs kept | params kept | left alone | ONNX error | seconds | peak GB "
        "| status | reason |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    lines += [_result_line(r) for r in by_family(report.rows)]
    lines += ["", f"Raw results: every row with per-stage seconds, the layers left alone and the plan checks, "
              f"in `{report.settings.get('json_name', 'coverage.json')}`.", ""]
    return lines


def _result_line(r: CoverageRow) -> str:
    size = "x".join(map(str, r.input_size)) if r.input_size else ""
    if r.create_kwargs:
        size += " (" + ", ".join(f"{k}={v}" for k, v in r.create_kwargs.items()) + ")"
    onnx = "" if r.onnx_error is None else f"{r.onnx_error:.1e}"
    if r.onnx_error is not None and r.output_spread is not None and r.output_spread < CONSTANT_OUTPUT:
        onnx += f" (weak: output spread {r.output_spread:.0e})"
    # Groups prune() left alone besides the classifier: its self-healing at work on this model.
    alone = str(len(left_alone(r))) if r.macs_kept is not None else ""
    peak = "" if r.peak_rss_gb is None else f"{r.peak_rss_gb:.1f}"
    return (f"| `{r.family}` | `{r.model or '?'}` | {size} | {_pct(r.macs_kept)} | {_pct(r.params_kept)} | "
            f"{alone} | {onnx} | {r.seconds:.1f} | {peak} | {r.status} | {_cell(r.reason)} |")


def _longest_stage(row: CoverageRow) -> str:
    if row.status == "timeout":  # the child never reported its stages; the reason names the one it was in
        return row.reason.split(":", 1)[0] + " (stopped)"
    if not row.stage_seconds:
        return ""
    name = max(row.stage_seconds, key=row.stage_seconds.__getitem__)
    return f"{name} {row.stage_seconds[name]:.1f} s"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def _cell(text: str, limit: int = 240) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"
