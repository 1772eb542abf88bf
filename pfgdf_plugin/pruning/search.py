"""One prune() call's search for a plan that works: threshold, trial on copies, healing, measured correction.

The threshold comes from the cost prediction (``allocation``); the plan is then applied to a model copy and
checked. Groups that break the model are left alone and the threshold searched again (healing); when measured
cost still misses a target (overlapping groups the prediction cannot see), the threshold is re-aimed on
measurements.
"""

from __future__ import annotations

import copy
import gc
import warnings

import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.allocation import CostModel, ScoredGroup, bisect_threshold, make_plan
from pfgdf_plugin.allocation.fill import fill_to_target
from pfgdf_plugin.allocation.plan import Plan
from pfgdf_plugin.models.inputs import Shapes
from pfgdf_plugin.pruning.apply import Applied, apply_plan
from pfgdf_plugin.pruning.checks import Settings
from pfgdf_plugin.pruning.errors import TargetOutOfReachError
from pfgdf_plugin.pruning.graph import build_graph
from pfgdf_plugin.pruning.healing import find_inconsistent

# The search aims this close to the target so that the measured model lands well inside 1 point.
SEARCH_TOLERANCE = 0.0025
# A target counts as met within 1 percentage point; up to this many measured corrections try to meet it.
TARGET_TOLERANCE = 0.01
MAX_CORRECTIONS = 6
# Rounds of "find the groups that break the model, leave them alone, search again".
MAX_HEALING_ROUNDS = 3


class PlanSearch:
    """The state of one prune() call between tracing and the result.

    Attributes:
        groups: the groups still prunable; ``left_alone`` maps the others' root names to why.
        cost: the cost model over ``groups``.
        threshold, steps, plan: the current threshold, search steps so far, and its plan.
        applied, model: the measured outcome of the current plan and the model copy it was applied to.
        corrections: measured re-aims made to meet a target.
    """

    def __init__(
        self, original: nn.Module, example_inputs: object, settings: Settings, groups: list[ScoredGroup],
        cost: CostModel, out_shape: Shapes, *, progress: bool = False,
    ) -> None:
        self.original, self.example_inputs, self.settings = original, example_inputs, settings
        self.groups, self.cost, self.out_shape, self.progress = groups, cost, out_shape, progress
        self.left_alone: dict[str, str] = {}
        self.model: nn.Module = original
        self.hi, self.floor = 0.0, 1.0
        self.threshold, self.steps, self.corrections = 0.0, 0, 0
        self.plan = Plan(0.0, ())
        self.filled = False  # the plan was completed group by group (see allocation.fill), not by one threshold
        self.applied: Applied | Exception | None = None

    def search(self) -> None:
        """Set the threshold: ``alpha`` itself, or the one the cost model puts at the target; and its plan."""
        # Channels a criterion cannot score get +inf and are never pruned: the search range ends at the
        # largest finite score.
        groups, s = self.groups, self.settings
        finite = [float(g.scores[g.scores.isfinite()].max()) for g in groups if g.scores.isfinite().any()]
        self.hi = max(finite, default=0.0) * (1 + 1e-9) + 1e-9
        if s.target is None:
            self.threshold = float(s.alpha)  # type: ignore[arg-type]
            self.plan = make_plan(groups, self.threshold, s.min_channels, s.round_to)
        else:
            self.search_to(*s.target)

    def search_to(self, kind: str, keep: float) -> None:
        """Aim the plan at keeping ``keep`` of the predicted ``kind`` (bisection on the threshold, then fill)."""
        s = self.settings
        base = getattr(self.cost.base, kind)

        def kept_of(plan: Plan) -> float:
            return getattr(self.cost.estimate(plan), kind) / base

        def kept_at(t: float) -> float:
            return kept_of(make_plan(self.groups, t, s.min_channels, s.round_to))

        self.floor = kept_at(self.hi)
        if self.floor > keep + TARGET_TOLERANCE:
            # Out of reach by the prediction; a measurement at the largest threshold has the last word
            # (splits such as MixNet's mixed convs shrink more layers than the prediction sees).
            self.threshold, self.steps = self.hi, self.steps + 1
            self.plan = make_plan(self.groups, self.hi, s.min_channels, s.round_to)
            return
        found = bisect_threshold(kept_at, keep, self.hi, tolerance=SEARCH_TOLERANCE)
        self.steps += found.steps
        self.threshold = found.threshold
        self.plan = make_plan(self.groups, found.threshold, s.min_channels, s.round_to)
        if abs(found.kept - keep) > SEARCH_TOLERANCE and found.above is not None:
            # No threshold lands near the target (one group's step is a large share of the cost): take the
            # lowest-scoring steps group by group from the plan just above it.
            start = make_plan(self.groups, found.above[0], s.min_channels, s.round_to)
            # Steps may go below the target by half the accepted miss: coarse groups leave no closer plan.
            filled = fill_to_target(self.groups, start, kept_of, keep, SEARCH_TOLERANCE, s.min_channels, s.round_to,
                                    below=TARGET_TOLERANCE / 2)
            if abs(kept_of(filled) - keep) < abs(found.kept - keep):
                self.plan, self.threshold, self.filled = filled, found.above[0], True

    def attempt(
        self, plan: Plan, model: nn.Module | None = None, graph: tp.DependencyGraph | None = None
    ) -> Applied | Exception:
        """Apply ``plan`` to ``model`` (a fresh copy of the original by default) and check it; the failure is
        returned, not raised, so the caller can heal."""
        if model is None:
            # A dependency graph and its model hold each other in reference cycles: without a collection the
            # copies of earlier attempts stay resident until Python's collector happens to run.
            gc.collect()
        work = copy.deepcopy(self.original) if model is None else model
        with eval_mode(work):
            if graph is None:
                graph = build_graph(work, self.example_inputs, original=self.original,
                                    timeout=self.settings.graph_timeout)
            try:
                applied = apply_plan(work, graph, self.groups, plan.removed, self.example_inputs, self.out_shape)
            except Exception as err:  # any failure of pruning or of the pruned model is healed by the caller
                return err
        self.model = work
        return applied

    def apply_and_heal(self, work: nn.Module, graph: tp.DependencyGraph) -> Applied:
        """Apply the plan to the traced copy ``work``; leave alone the groups that break it and search again."""
        applied = self.attempt(self.plan, work, graph)
        rounds = 0
        while True:
            if isinstance(applied, Exception):
                rounds += 1
                if rounds > MAX_HEALING_ROUNDS:
                    raise RuntimeError(f"the pruned model no longer runs ({applied})") from applied
                # Some group cannot be pruned consistently: find which on copies, leave it alone, search again.
                bad = find_inconsistent(self.original, self.example_inputs, self.groups, self.plan.removed,
                                        self.out_shape, timeout=self.settings.graph_timeout, progress=self.progress)
            elif applied.rejected:
                # Torch-Pruning refused these groups, so the cost prediction counted cuts that never happened.
                bad = {i: "Torch-Pruning's check refused to prune this group" for i in applied.rejected}
            else:
                self.applied = applied
                return applied
            if not bad:
                raise RuntimeError(
                    f"the pruned model no longer runs ({applied}) and no single group is to blame; pass the "
                    "layers involved in ignored_layers"
                ) from (applied if isinstance(applied, Exception) else None)
            self._leave_alone(bad)
            self.search()
            applied = self.attempt(self.plan)

    def _leave_alone(self, bad: dict[int, str]) -> None:
        self.left_alone.update({self.groups[i].root_name: why for i, why in bad.items()})
        self.groups = [g for i, g in enumerate(self.groups) if i not in bad]
        if not self.groups:
            raise ValueError(f"model has no prunable layer: every group breaks the model ({bad})")
        self.cost = self.cost.subset(self.groups)

    def kept(self, applied: Applied, kind: str) -> float:
        """The measured fraction of ``kind`` (``"macs"`` or ``"params"``) that ``applied`` keeps."""
        base = self.cost.base
        return applied.macs / base.macs if kind == "macs" else applied.params / base.params

    def meet_target(self) -> None:
        """Re-aim the threshold on measurements until the measured cost is within 1 point of the target."""
        if self.settings.target is None:
            return
        kind, keep = self.settings.target
        assert isinstance(self.applied, Applied)
        measured = self.kept(self.applied, kind)
        if self.threshold >= self.hi and measured > keep + TARGET_TOLERANCE:
            raise TargetOutOfReachError(kind, keep, measured, self.settings.min_channels)
        # Overlapping groups (a gate multiplying a concatenation, as in GhostNet) make Torch-Pruning cut
        # some channels twice, which the prediction cannot see. Then search on measurements instead
        # (regula falsi between the best thresholds on either side of the target), each on a fresh copy.
        # Threshold 0 prunes nothing: kept fraction 1.
        points = [(0.0, 1.0), (self.threshold, measured)]
        best_model = self.model
        while abs(measured - keep) > TARGET_TOLERANCE and self.corrections < MAX_CORRECTIONS:
            self.corrections += 1
            above = max((p for p in points if p[1] > keep), key=lambda p: p[0])
            below = min((p for p in points if p[1] <= keep), key=lambda p: p[0], default=(self.hi, self.floor))
            t = above[0] + (below[0] - above[0]) * (above[1] - keep) / max(above[1] - below[1], 1e-12)
            plan = make_plan(self.groups, t, self.settings.min_channels, self.settings.round_to)
            fresh = self.attempt(plan)
            if isinstance(fresh, Exception):
                continue
            fresh_measured = self.kept(fresh, kind)
            points.append((t, fresh_measured))
            if abs(fresh_measured - keep) < abs(measured - keep):
                best_model, self.plan, self.threshold = self.model, plan, t
                self.applied, measured = fresh, fresh_measured
        self.model = best_model
        if abs(measured - keep) > TARGET_TOLERANCE:
            above = min((m for _, m in points if m > keep), default=1.0)
            below = [m for _, m in points if m <= keep]
            # Only measured plans are named: the predicted floor is not a measurement (and can be off).
            nearest = (f"the nearest plans measured keep {max(below):.1%} and {above:.1%}" if below
                       else f"no plan measured keeps less than {above:.1%}")
            warnings.warn(
                f"prune(): measured {kind} kept {measured:.1%} misses target {keep:.1%} by more than "
                f"{TARGET_TOLERANCE:.0%}: {nearest} (whole channels are coarse steps in small layers, and "
                "overlapping groups cut some channels twice)",
                stacklevel=3,
            )

    def target_met(self) -> bool | None:
        """Whether the measured cost is within 1 point of the target (``None`` without a target)."""
        if self.settings.target is None or not isinstance(self.applied, Applied):
            return None
        kind, keep = self.settings.target
        return abs(self.kept(self.applied, kind) - keep) <= TARGET_TOLERANCE
