"""Latency targets in prune(): the table, the predicted search, and the measured correction on the real model.

`LatencySearch.prepare` finds the model's operators, gets their latency table (the caller's, or one measured
here and cached per runtime), and turns the target into a fraction of the predicted latency to keep. The threshold
search then runs on that prediction exactly as on MACs (one alpha, every group's ratio from its own scores), with
channel counts kept at the table's step (ONNX Runtime's channel block) unless ``round_to`` says otherwise.
Where the table describes this machine, `LatencySearch.meet` exports the pruned model, times it against the
unpruned one (interleaved runs) and re-aims the prediction until the measured speed-up is within
`LATENCY_TOLERANCE`: what the table cannot see (layout reorders, activations, memory traffic) is corrected by
measurement, as overlapping groups are for MACs.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import torch
import torch.nn as nn

from pfgdf_plugin.allocation import CostModel
from pfgdf_plugin.allocation.latency import LatencyModel
from pfgdf_plugin.measure.operators import OperatorSite, model_id, operator_sites
from pfgdf_plugin.measure.table import LatencyTable, TableError, check_key, this_machine
from pfgdf_plugin.pruning.apply import Applied
from pfgdf_plugin.pruning.checks import LatencyGoal, Settings
from pfgdf_plugin.pruning.errors import TargetOutOfReachError
from pfgdf_plugin.pruning.result import LatencyOutcome
from pfgdf_plugin.pruning.search import PlanSearch

# A latency target counts as met when the measured latency is within 3% of the one asked for.
LATENCY_TOLERANCE = 0.03
MAX_LATENCY_CORRECTIONS = 4
# Interleaved runs per measurement inside the search (the benchmark protocol's 50 are for reported figures).
SEARCH_RUNS = 30


class LatencySearch:
    """One prune() call's latency target: its table, prediction and measurements.

    Attributes:
        goal: the checked target; ``table`` the latency table used; ``sites`` the model's operators.
        predictor: the latency model; ``local`` whether the table describes this machine (then measured).
        table_seconds: time spent measuring the table here.
    """

    def __init__(self, goal: LatencyGoal, table: LatencyTable, sites: list[OperatorSite], whole_ms: float,
                 local: bool, table_name: str, table_seconds: float) -> None:
        self.goal, self.table, self.sites, self.local = goal, table, sites, local
        self.predictor = LatencyModel(table, sites, whole_ms)
        self.table_name, self.table_seconds = table_name, table_seconds
        self.measured: tuple[float, float] | None = None
        self._predicted_met: bool | None = None
        self.corrections = 0

    @classmethod
    def prepare(cls, work: nn.Module, original: nn.Module, example_inputs: object, goal: LatencyGoal, *,
                progress: bool = False) -> LatencySearch:
        """Operators of ``work`` (the traced copy), and their table: the goal's, or this machine's (cached)."""
        if not isinstance(example_inputs, torch.Tensor):
            raise ValueError("example_inputs must be one tensor for a latency target (the model is exported to "
                             f"ONNX and timed on it), got {type(example_inputs).__name__}")
        sites = operator_sites(work, example_inputs)
        if not sites:
            raise ValueError("model has no conv, linear or attention operator a latency table can describe")
        mid = model_id(original, sites)
        here = this_machine(goal.threads)
        if goal.table is not None:
            table = goal.table
            if table.source == "local":
                # A table built by prune() describes the machine it was built on; elsewhere it is refused.
                check_key(table, here, what=goal.table_name, insist=goal.insist)
            if mid not in table.models:
                raise TableError(f"{goal.table_name} has no whole-model latency for this model at this input size: "
                                 "write its probes with `pfgdf profile probes` for this model and input size")
            local = not table.key.differences(here)
            return cls(goal, table, sites, float(table.models[mid]["ms"]), local, goal.table_name, 0.0)
        from pfgdf_plugin.measure.profiling import local_table

        start = time.perf_counter()
        table, path = local_table(original, example_inputs, sites, mid, goal.threads, progress=progress,
                                  insist=goal.insist)
        return cls(goal, table, sites, float(table.models[mid]["ms"]), True, str(path),
                   time.perf_counter() - start)

    def settings(self, settings: Settings, cost: CostModel) -> Settings:
        """``settings`` with the latency fraction to keep, and ``round_to`` at the table's step unless given."""
        base = cost.base.latency
        assert base is not None
        if self.goal.kind == "speedup":
            keep = 1.0 / self.goal.value
        else:
            if self.goal.value >= base:
                raise ValueError(f"target_latency_ms={self.goal.value:g} is not below the unpruned model's "
                                 f"{base:.3g} ms ({self.describe_table()}): nothing to prune")
            keep = self.goal.value / base
        round_to = settings.round_to if settings.round_to is not None else self.table.step
        return dataclasses.replace(settings, target=("latency", keep), round_to=round_to)

    def describe_table(self) -> str:
        return f"{self.table.key.describe()}; {self.table.source} table {self.table_name}"

    def _goal_keep(self, before_ms: float) -> float:
        return 1.0 / self.goal.value if self.goal.kind == "speedup" else self.goal.value / before_ms

    def meet(self, run: PlanSearch, example_inputs: torch.Tensor) -> None:
        """Measure the pruned model against the unpruned one here and re-aim the prediction until they agree
        with the target (only where the table describes this machine; otherwise the prediction stands)."""
        _, keep = run.settings.target  # type: ignore[misc]
        predicted = run.cost.estimate(run.plan).latency / run.cost.base.latency  # type: ignore[operator]
        if not self.local:
            if predicted > keep * (1 + LATENCY_TOLERANCE) and run.threshold >= run.hi:
                raise TargetOutOfReachError("latency", keep, predicted, run.settings.min_channels)
            self._predicted_met = abs(predicted / keep - 1) <= LATENCY_TOLERANCE
            return
        from pfgdf_plugin.deploy.onnx import onnx_bytes
        from pfgdf_plugin.device_probe import time_interleaved

        shape = list(example_inputs.shape)
        anchor = onnx_bytes(run.original, example_inputs)

        def measure(model: nn.Module) -> tuple[float, float]:
            before, after = time_interleaved([anchor, onnx_bytes(model, example_inputs)], shape,
                                             self.goal.threads, runs=SEARCH_RUNS)
            return before, after

        before, after = measure(run.model)
        # Measured pruned models: (the plan's kept channel fractions, measured kept latency fraction).
        history = [(run.cost.fractions(run.plan), after / before)]
        best = (abs(after / before / self._goal_keep(before) - 1), run.model, run.plan, run.threshold, run.applied,
                (before, after))
        while best[0] > LATENCY_TOLERANCE and self.corrections < MAX_LATENCY_CORRECTIONS:
            # Refit the prediction to the latest measurement, then aim it where the measurements say the target is.
            self.predictor.calibrate(*history[-1])
            points = [(1.0, 1.0)] + [(self.predictor.predict(f) / self.predictor.whole_ms, m) for f, m in history]
            aim = _aim(points, self._goal_keep(before))
            if aim is None:
                break
            self.corrections += 1
            run.search_to("latency", aim)
            fresh = run.attempt(run.plan)
            if isinstance(fresh, Exception):
                continue
            before, after = measure(run.model)
            history.append((run.cost.fractions(run.plan), after / before))
            miss = abs(after / before / self._goal_keep(before) - 1)
            if miss < best[0]:
                best = (miss, run.model, run.plan, run.threshold, fresh, (before, after))
        miss, run.model, run.plan, run.threshold, run.applied, self.measured = best
        before, after = self.measured
        goal = self._goal_keep(before)
        floor = min(m for _, m in history)
        if after / before > goal * (1 + LATENCY_TOLERANCE) and run.threshold >= run.hi:
            raise TargetOutOfReachError("latency", goal, floor, run.settings.min_channels)
        if miss > LATENCY_TOLERANCE:
            warnings.warn(
                f"prune(): measured speed-up {before / after:.2f}x misses the target {1 / goal:.2f}x by more than "
                f"{LATENCY_TOLERANCE:.0%} after {self.corrections} measured corrections (whole channel steps are "
                "coarse in small layers; timing noise on a busy machine)", stacklevel=3)

    def target_met(self) -> bool | None:
        """Measured (here) or predicted (a device's table) latency within `LATENCY_TOLERANCE` of the target."""
        if self.measured is not None:
            before, after = self.measured
            return abs(after / before / self._goal_keep(before) - 1) <= LATENCY_TOLERANCE
        return self._predicted_met

    def outcome(self, run: PlanSearch) -> LatencyOutcome:
        """What the result reports: predicted and (here) measured latencies, before and after."""
        assert isinstance(run.applied, Applied)
        before_ms = run.cost.base.latency
        # The table's own prediction, before any fit to measurements: what a device's table would have said.
        fitted = self.predictor.constant_ms, self.predictor.gain
        self.predictor.reset()
        after_ms = run.cost.estimate(run.plan).latency
        self.predictor.constant_ms, self.predictor.gain = fitted
        measured = self.measured or (None, None)
        return LatencyOutcome(
            goal=self.goal.kind, value=self.goal.value, threads=self.goal.threads, table=self.describe_table(),
            predicted_before_ms=float(before_ms), predicted_after_ms=float(after_ms),  # type: ignore[arg-type]
            measured_before_ms=measured[0], measured_after_ms=measured[1], corrections=self.corrections,
            table_seconds=self.table_seconds,
        )


def _aim(points: list[tuple[float, float]], goal: float) -> float | None:
    """The predicted kept fraction to search for so that the measured one is ``goal``: linear between the nearest
    measured points on either side of it, or proportional from the nearest one when all lie on one side."""
    above = [p for p in points if p[1] > goal]
    below = [p for p in points if p[1] <= goal]
    if above and below:
        (pa, ma), (pb, mb) = min(above, key=lambda p: p[1]), max(below, key=lambda p: p[1])
        if ma == mb:
            return None
        return pb + (pa - pb) * (goal - mb) / (ma - mb)
    p, m = min(points, key=lambda p: abs(p[1] - goal))
    return p * goal / m if m > 0 else None
