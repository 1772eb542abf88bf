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
