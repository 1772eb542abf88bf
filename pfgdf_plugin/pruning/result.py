"""What prune() did, as data: the pruned model, per-group and per-layer channel changes, costs, timings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch.nn as nn

from pfgdf_plugin._util import io
from pfgdf_plugin.pruning.report import prune_table


@dataclass
class GroupChange:
    """One dependency group: its root layer, the coupled layers, channels before and after."""

    root: str
    layers: list[str]
    channels_before: int
    channels_after: int

    @property
    def kept(self) -> float:
        return self.channels_after / self.channels_before


@dataclass
class LayerChange:
    """One conv or linear layer's channels before and after pruning."""

    name: str
    type: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int


@dataclass
class LatencyOutcome:
    """A latency target and what was reached, on ONNX Runtime's CPU provider at ``threads`` threads.

    Attributes:
        goal: ``"speedup"`` or ``"ms"``; ``value`` the target (times faster, or milliseconds).
        threads: intra-op threads the latencies are for.
        table: the table's runtime (CPU, ISA, ONNX Runtime version, threads) and where it came from.
        predicted_before_ms, predicted_after_ms: the table's prediction for the unpruned and pruned model (the
            unpruned prediction is the whole-model measurement stored in the table; the pruned one is the table's
            alone, before the search fitted it to measurements).
        measured_before_ms, measured_after_ms: medians of interleaved runs of both exported models here, or
            ``None`` when the table describes another machine (then nothing here can measure it).
        corrections: measured re-aims of the search.
        table_seconds: time spent measuring the table (0 when every operator was cached).
    """

    goal: str
    value: float
    threads: int
    table: str
    predicted_before_ms: float
    predicted_after_ms: float
    measured_before_ms: float | None = None
    measured_after_ms: float | None = None
    corrections: int = 0
    table_seconds: float = 0.0

    @property
    def predicted_speedup(self) -> float:
        return self.predicted_before_ms / self.predicted_after_ms

    @property
    def measured_speedup(self) -> float | None:
        if self.measured_before_ms is None or self.measured_after_ms is None:
            return None
        return self.measured_before_ms / self.measured_after_ms

    @property
    def target_speedup(self) -> float:
        """The speed-up asked for (a millisecond target over the unpruned latency: measured, else predicted)."""
        if self.goal == "speedup":
            return self.value
        return (self.measured_before_ms or self.predicted_before_ms) / self.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"predicted_speedup": self.predicted_speedup,
                               "measured_speedup": self.measured_speedup, "target_speedup": self.target_speedup}


@dataclass
class PruneResult:
    """What `prune` did.

    Attributes:
        model: the pruned model (the input model itself when ``inplace=True``, else a copy).
        alpha: the threshold used: channels whose group score is below it were pruned.
        target: ``("macs" | "params", fraction to keep)`` when a target was searched, else ``None``.
        search_steps: threshold evaluations the search made (0 for a given ``alpha``).
        criterion: the importance that set the per-group counts; ``ranked_by`` the one that chose channels.
        groups: per dependency group, channels before/after (the per-group ratios PFGDF allocated).
        layers: per conv/linear layer, in/out channels before/after.
        ignored: layers left alone, with the reason.
        macs_before, macs_after, params_before, params_after: measured by ``tp.utils.count_ops_and_params``.
        seconds: wall time of the whole call.
        extra: ``stage_seconds`` (prepare, graph_and_scoring, count_before, search, apply_and_verify),
            ``corrections`` (measured re-aims of a target search) and ``target_met``.
        latency: with a latency target, the latencies predicted and measured (`LatencyOutcome`), else ``None``.
    """

    model: nn.Module
    alpha: float
    target: tuple[str, float] | None
    search_steps: int
    criterion: str
    ranked_by: str
    groups: list[GroupChange]
    layers: list[LayerChange]
    ignored: dict[str, str]
    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    latency: LatencyOutcome | None = None

    @property
    def macs_kept(self) -> float:
        """Fraction of MACs the pruned model keeps."""
        return self.macs_after / self.macs_before

    @property
    def params_kept(self) -> float:
        """Fraction of parameters the pruned model keeps."""
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-ready values."""
        return {
            "alpha": self.alpha,
            "target": None if self.target is None else {"kind": self.target[0], "keep": self.target[1]},
            "search_steps": self.search_steps,
            "criterion": self.criterion,
            "ranked_by": self.ranked_by,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_kept": self.macs_kept,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": self.params_kept,
            "seconds": self.seconds,
            "groups": [asdict(g) | {"kept": g.kept} for g in self.groups],
            "layers": [asdict(layer) for layer in self.layers],
            "ignored": self.ignored,
            "latency": None if self.latency is None else self.latency.to_dict(),
            **self.extra,
        }

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            io.write_text(path, text + "\n")
        return text

    def table(self) -> str:
        """A readable per-group table with the totals underneath."""
        return prune_table(self)
