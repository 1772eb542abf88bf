"""The sweep's results: one model's row (`CoverageRow`), the whole sweep (`CoverageReport`) and the statuses.

Data only: `pfgdf_plugin.studies.coverage.report` renders a report (summary, JSON, Markdown page).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CoverageReport:
        """Read a report written by `render_json` (to regenerate the Markdown page without a new sweep)."""
        data = json.loads(Path(path).read_text())
        return cls(rows=[CoverageRow.from_dict(r) for r in data["rows"]], date=data["date"],
                   seconds=data["seconds"], environment=data["environment"], settings=data["settings"])


Previous = CoverageReport | Mapping[str, Any]
"""An older sweep to compare with: a `CoverageReport`, or the parsed JSON of its ``coverage.json``."""


def by_family(rows: Iterable[CoverageRow]) -> list[CoverageRow]:
    """Rows sorted by family, then model: the order of the JSON and the page."""
    return sorted(rows, key=lambda r: (r.family, r.model))
