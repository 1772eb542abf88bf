"""Predict a plan's latency from a latency table: the model's constant part plus each operator at its kept
channel counts.

The operators are the model's `OperatorSite` s (`pfgdf_plugin.measure.operators`); a plan's kept fraction of each
layer's channels (from `CostModel`) gives each operator's kept counts, and the table their milliseconds. The
constant is the whole model's measured latency minus its operators' latencies at full width, so the unpruned
prediction equals the measurement by construction. Each operator's own time is its probe's minus the table's
``overhead_ms`` (one run call of the runtime, which a probe pays per operator and a model once). Part of the
constant is work between operators that shrinks with them (activations, residual adds, layout reorders):
`LatencyModel.calibrate` refits the split between constant and operators to a measured pruned model.

Examples:
    >>> import torch.nn as nn
    >>> from pfgdf_plugin.measure.operators import OperatorSite
    >>> from pfgdf_plugin.measure.table import LatencyTable, TableKey
    >>> layer = nn.Linear(16, 16)
    >>> site = OperatorSite({"op": "linear", "tokens": [1], "in": 16, "out": 16},
    ...                     {"in": (layer, "in", 1), "out": (layer, "out", 1)})
    >>> table = LatencyTable(TableKey("cpu", "x86_64", (), "1.0", 1), step=8)
    >>> table.add(site.id, site.signature, {"in": [8, 16], "out": [8, 16]}, [[1.0, 2.0], [2.0, 4.0]])
    >>> model = LatencyModel(table, [site], whole_ms=5.0)
    >>> model.constant_ms, model.predict({(id(layer), "out"): 0.5})
    (1.0, 3.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pfgdf_plugin.measure.table import LatencyTable, TableError
from pfgdf_plugin.models.layers import channel_count

if TYPE_CHECKING:  # operators imports pruning, which imports this module
    from pfgdf_plugin.measure.operators import OperatorSite


class LatencyModel:
    """Milliseconds of a model after a plan, predicted from a `LatencyTable` and the whole model's latency."""

    def __init__(self, table: LatencyTable, sites: list[OperatorSite], whole_ms: float) -> None:
        if missing := table.missing([s.id for s in sites]):
            raise TableError(f"the latency table lacks {len(missing)} of this model's {len(set(s.id for s in sites))} "
                             f"operators (e.g. {missing[0]}): it was measured for another model or input size")
        self.table, self.sites = table, sites
        self._full = [{axis: channel_count(m, d) // div for axis, (m, d, div) in s.axes.items()} for s in sites]
        self.operators_ms = sum(self._ms(s, full) for s, full in zip(sites, self._full, strict=True))
        self.whole_ms = whole_ms
        self.reset()

    def reset(self) -> None:
        """Back to the table's own prediction: ``whole = constant + operators``, each operator as measured alone.

        When the operators measured alone add up to more than the whole model (each probe pays layout reorders
        and memory traffic that a model shares between operators), there is no constant left and the operators'
        sum is scaled to the whole model instead (``gain`` < 1).
        """
        self.constant_ms = max(0.0, self.whole_ms - self.operators_ms)
        self.gain = (self.whole_ms - self.constant_ms) / self.operators_ms if self.operators_ms else 1.0

    def calibrate(self, fractions: dict[tuple[int, str], float], measured_kept: float) -> None:
        """Fit the prediction to one measured pruned model, whose latency is ``measured_kept`` of the unpruned one:
        the line ``constant + gain * operators`` through the unpruned and the pruned measurement (the work
        between operators that shrinks with them: activations, residual adds, reorders, is then carried by the
        gain). The constant stays >= 0; a measurement the operators cannot explain changes nothing.
        """
        ops = self.operators(fractions)
        if not 0 < measured_kept < 1 or ops >= self.operators_ms:
            return
        gain = self.whole_ms * (1 - measured_kept) / (self.operators_ms - ops)
        constant = self.whole_ms - gain * self.operators_ms
        if constant < 0:
            constant, gain = 0.0, self.whole_ms / self.operators_ms
        self.constant_ms, self.gain = constant, gain

    def operators(self, fractions: dict[tuple[int, str], float]) -> float:
        """The operators' own milliseconds at the plan's kept fractions, as the table has them."""
        return sum(self._ms(site, counts) for site, counts in self._counts(fractions))

    def _ms(self, site: OperatorSite, counts: dict[str, int]) -> float:
        # Each probe's time includes one run call's overhead that the whole model pays once (in the constant).
        return max(0.0, self.table.lookup(site.id, counts) - self.table.overhead_ms)

    def _counts(self, fractions: dict[tuple[int, str], float]) -> list[tuple[OperatorSite, dict[str, int]]]:
        return [(site, {axis: max(1, round(full[axis] * fractions.get((id(m), d), 1.0)))
                        for axis, (m, d, _div) in site.axes.items()})
                for site, full in zip(self.sites, self._full, strict=True)]

    def predict(self, fractions: dict[tuple[int, str], float]) -> float:
        """Milliseconds with each layer keeping ``fractions[(id(layer), direction)]`` of its channels (1 if absent)."""
        return self.constant_ms + self.gain * self.operators(fractions)

