"""Meeting a target between two thresholds: remove the next-lowest-scoring units group by group.

One threshold moves every group at once; with `round_to` a group loses a whole block of channels per step, and
when one group's block is a large share of the cost (a residual stream coupled across a whole stage) no
threshold lands near the target. The fill starts from the plan just above the target and takes, one group at a
time, the step whose units score lowest among those that do not overshoot: the same order PFGDF's single
threshold would follow, skipping only the steps too large to fit.

Examples:
    >>> import torch
    >>> from pfgdf_plugin.allocation.plan import ScoredGroup
    >>> g = ScoredGroup(root=None, root_name="g", handler=None, channels=4, ch_groups=1,
    ...                 scores=torch.tensor([0.1, 0.2, 0.3, 0.4]), ranking=torch.arange(4))
    >>> next_removal(g, 0, min_channels=1, round_to=2)   # keep 2 of 4: the two lowest units go
    2
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pfgdf_plugin.allocation.plan import Plan, ScoredGroup, expand_positions, pruned_positions

# Upper bound on fill steps: each is one cost prediction per group, and the gap it closes is one bisection step.
MAX_FILL_STEPS = 400


def next_removal(group: ScoredGroup, removed: int, min_channels: int, round_to: int | None) -> int | None:
    """The next number of units ``group`` may lose after ``removed`` (keeping ``round_to`` multiples and at least
    ``min_channels``), or ``None`` when it can lose no more."""
    m, width = group.units, group.ch_groups * group.block
    floor = min(m, max(1, math.ceil(max(min_channels, group.min_kept) / width)))
    for kept in range(m - removed - 1, floor - 1, -1):
        if not round_to or round_to <= 1 or (kept * width) % round_to == 0:
            return m - kept
    return None


def plan_from_counts(groups: list[ScoredGroup], counts: list[int], threshold: float) -> Plan:
    """The plan that removes ``counts[i]`` lowest-ranked units of each group."""
    removed = tuple(tuple(expand_positions(g, pruned_positions(g, c))) if c else () for g, c in zip(groups, counts,
                                                                                                   strict=True))
    return Plan(threshold=threshold, removed=removed)


def fill_to_target(
    groups: list[ScoredGroup], start: Plan, kept_of: Callable[[Plan], float], target: float, tolerance: float,
    min_channels: int, round_to: int | None, below: float | None = None,
) -> Plan:
    """From ``start`` (a plan keeping more than ``target``), remove steps of units until the predicted kept
    fraction ``kept_of(plan)`` is within ``tolerance`` of ``target``, lowest-scoring step first, never going below
    ``target - below`` (``below`` defaults to ``tolerance``). Returns the plan reached (``start`` when no step
    fits)."""
    below = tolerance if below is None else below
    width = [g.ch_groups * g.block for g in groups]
    counts = [len(r) // w for r, w in zip(start.removed, width, strict=True)]
    current = kept_of(start)
    plan = start
    for _ in range(MAX_FILL_STEPS):
        if current <= target + tolerance:
            break
        candidates = []
        for i, g in enumerate(groups):
            nxt = next_removal(g, counts[i], min_channels, round_to)
            if nxt is not None:
                score = float(g.scores[g.ranking[counts[i]:nxt]].max())
                if math.isfinite(score):  # a channel the criterion could not score is never pruned
                    candidates.append((score, i, nxt))
        for _score, i, nxt in sorted(candidates):
            trial = counts.copy()
            trial[i] = nxt
            trial_plan = plan_from_counts(groups, trial, start.threshold)
            kept = kept_of(trial_plan)
            if kept >= target - below:
                counts, current, plan = trial, kept, trial_plan
                break
        else:
            break  # every remaining step overshoots the target
    return plan
