"""A sweep's renderings: the summary lines, the JSON document and the Markdown page.

With ``previous`` (an older report, or its parsed JSON), the JSON and the page also compare the sweep with it
(`figures.comparison`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from pfgdf_plugin._util import io as _io
from pfgdf_plugin.studies.coverage.cases import (
    CONSTANT_OUTPUT,
    DEFAULT_MEMORY_LIMIT_GB,
    DEFAULT_TIMEOUT,
    MACS_EXCEPTIONS,
    MACS_KEPT_LIMIT,
    NUM_CLASSES,
    TARGET_MACS,
)
from pfgdf_plugin.studies.coverage.figures import (
    CATEGORIES,
    LEFT_ALONE_CATEGORIES,
    comparison,
    largest_memory,
    left_alone,
    left_alone_summary,
    out_of_reach,
)
from pfgdf_plugin.studies.coverage.result import SUCCESS_GOAL, CoverageReport, CoverageRow, Previous, by_family

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
