"""Bisection on the pruning threshold: the largest cut that still keeps the requested share of cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SearchResult:
    """Outcome of `bisect_threshold`.

    Attributes:
        threshold: the threshold found.
        kept: the predicted kept fraction at ``threshold``.
        steps: evaluations made.
        above: the largest threshold seen that keeps more than the target, and what it keeps.
    """

    threshold: float
    kept: float
    steps: int
    above: tuple[float, float] | None = None


def bisect_threshold(
    kept_at: Callable[[float], float],
    target: float,
    hi: float,
    *,
    tolerance: float = 0.0025,
    max_steps: int = 60,
) -> SearchResult:
    """Find a threshold in ``[0, hi]`` whose kept fraction is closest to ``target``.

    ``kept_at`` must be non-increasing in the threshold (a larger threshold never keeps more). The search
    stops once the prediction is within ``tolerance`` of ``target``, when the interval no longer changes the
    outcome, or after ``max_steps`` evaluations; it returns the best threshold seen.

    Examples:
        >>> r = bisect_threshold(lambda t: 1 - t / 4, target=0.5, hi=4.0)
        >>> round(r.threshold, 3), round(r.kept, 3)
        (2.0, 0.5)
    """
    lo = 0.0
    best = SearchResult(lo, kept_at(lo), 1)
    above = (lo, best.kept) if best.kept > target else None
    steps = 1
    while steps < max_steps:
        mid = 0.5 * (lo + hi)
        kept = kept_at(mid)
        steps += 1
        if abs(kept - target) < abs(best.kept - target):
            best = SearchResult(mid, kept, steps)
        if abs(kept - target) <= tolerance or hi - lo <= 1e-9 * max(1.0, hi):
            break
        if kept > target:
            lo = mid
            above = (mid, kept)
        else:
            hi = mid
    return SearchResult(best.threshold, best.kept, steps, above)
