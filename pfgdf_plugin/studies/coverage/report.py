"""The sweep's results (`CoverageRow`, `CoverageReport`) and their renderings: summary, JSON, Markdown page.

The dataclasses hold data; `render_summary`, `render_json` and `render_markdown` render it (the methods
`CoverageReport.summary`, `CoverageReport.to_json` and `CoverageReport.to_markdown` call them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
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

SUCCESS_GOAL = 0.95
STATUSES: tuple[str, ...] = ("ok", "exempt", "fail", "exception", "timeout")
PASSING: tuple[str, ...] = ("ok", "exempt")


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

    def to_dict(self) -> dict[str, Any]:
        return report_dict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        return render_json(self, path)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CoverageReport:
        """Read a report written by `to_json` (to regenerate the Markdown page without a new sweep)."""
        data = json.loads(Path(path).read_text())
        return cls(rows=[CoverageRow.from_dict(r) for r in data["rows"]], date=data["date"],
                   seconds=data["seconds"], environment=data["environment"], settings=data["settings"])

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """A complete documentation page: criteria, how it was run, versions, results; written to ``path``."""
        return render_markdown(self, path)


def by_family(rows: Iterable[CoverageRow]) -> list[CoverageRow]:
    """Rows sorted by family, then model: the order of the JSON and the page."""
    return sorted(rows, key=lambda r: (r.family, r.model))


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
    lines += [f"  {r.status:<9} {r.family}/{r.model}: {r.reason}" for r in by_family(report.rows) if not r.passed]
    return "\n".join(lines)


def report_dict(report: CoverageReport) -> dict[str, Any]:
    """The JSON document: the report, its summary, the documented exceptions and every row."""
    return {
        "date": report.date,
        "seconds": report.seconds,
        "environment": report.environment,
        "settings": report.settings,
        "summary": {"rows": len(report.rows), "passed": report.passed, "success_rate": report.success_rate,
                    "goal": SUCCESS_GOAL, "counts": report.counts(),
                    "slowest": [{"model": r.model, "family": r.family, "seconds": r.seconds}
                                for r in report.slowest()]},
        "macs_exceptions": {k: asdict(v) for k, v in MACS_EXCEPTIONS.items()},
        "rows": [r.to_dict() for r in by_family(report.rows)],
    }


def render_json(report: CoverageReport, path: str | os.PathLike | None = None) -> str:
    """The report as JSON text; also written atomically to ``path`` when given."""
    text = json.dumps(report_dict(report), indent=2)
    if path is not None:
        _io.write_text(path, text + "\n")
    return text


# --------------------------------------------------------------------------------------------- Markdown


def render_markdown(report: CoverageReport, path: str | os.PathLike | None = None) -> str:
    """A complete documentation page: criteria, how it was run, versions, results; written to ``path``.

    Args:
        report: the sweep's results.
        path: where to write the page atomically; ``None`` to only return it.

    Returns:
        The page's Markdown.
    """
    lines = [*_markdown_header(report), *_markdown_criteria(report.settings), *_markdown_exceptions(),
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
        "*left alone*: groups `prune()` did not prune besides the classifier (it could not build them, they broke "
        "the model on a trial copy, or Torch-Pruning refused them); the JSON has each one with the reason.",
        "",
        "| family | model | input | MACs kept | params kept | left alone | ONNX error | seconds | status "
        "| reason |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
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
    healed = sum(1 for why in r.ignored.values() if why != "classifier")
    alone = str(healed) if r.macs_kept is not None else ""
    return (f"| `{r.family}` | `{r.model or '?'}` | {size} | {_pct(r.macs_kept)} | {_pct(r.params_kept)} | "
            f"{alone} | {onnx} | {r.seconds:.1f} | {r.status} | {_cell(r.reason)} |")


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
