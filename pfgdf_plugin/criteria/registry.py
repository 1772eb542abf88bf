"""Criteria by name, and the one calibration loop every caller (CLI, recipes, the comparison) uses.

Adding a criterion: write its class in ``criteria/`` and add one line to ``CRITERIA`` below.

Examples:
    >>> imp = build("pfgdf-l1")
    >>> imp.importance
    PFGDFImportance(statistic='l1', group_reduction='mean')
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from pfgdf_plugin._util import validate
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.criteria.chip import CHIPImportance
from pfgdf_plugin.criteria.pfgdf import PFGDFImportance
from pfgdf_plugin.models.inputs import images_of

Importance = Callable[..., Any]


@dataclass(frozen=True)
class Built:
    """A criterion ready for ``prune()``: ``importance`` sets the per-group counts, ``rank_by`` (or ``None``)
    chooses the channels."""

    importance: Importance
    rank_by: Importance | None = None


@dataclass(frozen=True)
class Criterion:
    """One named criterion: how to build it, what it is, and what it needs before scoring.

    Args:
        name: the registry key (``--criteria`` names it).
        build: makes a fresh `Built` (new importance objects on every call).
        description: what it scores, in a few words, for help texts and reports.
        needs_calibration: it must see batches through `calibrate` before scoring (CHIP).
        needs_gradients: it reads ``weight.grad``: run a backward pass before scoring (Taylor).
    """

    name: str
    build: Callable[[], Built]
    description: str
    needs_calibration: bool = False
    needs_gradients: bool = False


def _pfgdf(statistic: str) -> Callable[[], Built]:
    return lambda: Built(PFGDFImportance(statistic=statistic))  # type: ignore[arg-type]


def _pfgdf_ranked_by(rank_by: Callable[[], Importance]) -> Callable[[], Built]:
    # rank_by only orders channels within a group, so it needs no cross-layer normalisation.
    return lambda: Built(PFGDFImportance(statistic="l1"), rank_by())


def _tp(importance: Callable[[], Importance]) -> Callable[[], Built]:
    return lambda: Built(importance())


_MAG = tp.importance.MagnitudeImportance

CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("pfgdf-l1", _pfgdf("l1"), "PFGDF z-scores (L1 statistic)"),
        Criterion("pfgdf-l2", _pfgdf("l2"), "PFGDF z-scores (L2 statistic)"),
        Criterion("pfgdf-mean", _pfgdf("mean"), "PFGDF z-scores (mean statistic)"),
        Criterion("pfgdf+l1", _pfgdf_ranked_by(lambda: _MAG(p=1, normalizer=None)),
                  "PFGDF (L1) per-layer counts, L1 norm picks channels (rank_by)"),
        Criterion("pfgdf+fpgm", _pfgdf_ranked_by(lambda: tp.importance.FPGMImportance(normalizer=None)),
                  "PFGDF (L1) per-layer counts, FPGM picks channels (rank_by)"),
        Criterion("pfgdf+chip", _pfgdf_ranked_by(CHIPImportance),
                  "PFGDF (L1) per-layer counts, CHIP (post-activation maps) picks channels (rank_by)",
                  needs_calibration=True),
        Criterion("chip", _tp(CHIPImportance),
                  "CHIP channel independence of the post-activation maps, per-layer mean normalisation",
                  needs_calibration=True),
        Criterion("l1", _tp(lambda: _MAG(p=1, normalizer="mean")), "group L1 norm, normalizer='mean'"),
        Criterion("l2", _tp(lambda: _MAG(p=2, normalizer="mean")), "group L2 norm, normalizer='mean'"),
        Criterion("fpgm", _tp(lambda: tp.importance.FPGMImportance(normalizer="mean")),
                  "FPGM (geometric median distance), normalizer='mean'"),
        Criterion("bn-scale", _tp(lambda: tp.importance.BNScaleImportance(normalizer="mean")),
                  "|BN gamma|, normalizer='mean'"),
        Criterion("taylor", _tp(lambda: tp.importance.TaylorImportance(normalizer="mean")),
                  "first-order Taylor |w*dL/dw|, normalizer='mean'", needs_gradients=True),
        Criterion("random", _tp(tp.importance.RandomImportance), "uniform random scores"),
    )
}
"""Name -> criterion. Torch-Pruning's own criteria use ``normalizer="mean"`` (each group's scores divided by their
mean) so that one global threshold compares layers; PFGDF's z-scores and CHIP's per-layer normalisation are
comparable by construction."""


def build(name: str) -> Built:
    """The criterion registered as ``name``; an unknown name raises naming the registered ones."""
    validate.one_of("criterion", name, tuple(CRITERIA))
    return CRITERIA[name].build()


def calibrate(
    importances: Iterable[object],
    model: nn.Module,
    batches: Iterable[object],
    *,
    num_batches: int | None = None,
    progress: bool = False,
    description: str = "calibrating CHIP",
) -> int:
    """Run ``model`` on ``batches`` (tensors, or ``(images, labels)`` pairs) once for every importance that
    calibrates (has a ``calibrate(model)`` context, as ``CHIPImportance`` does); others are skipped.

    Returns the number of batches run (0 when nothing needed calibration). The model runs in eval mode without
    gradients, and every module's training flag is restored afterwards.

    Examples:
        >>> import timm
        >>> model = timm.create_model("resnet10t", num_classes=10)
        >>> chip = CHIPImportance()
        >>> calibrate([chip], model, [torch.randn(2, 3, 32, 32)])
        1
    """
    needing = [imp for imp in importances if callable(getattr(imp, "calibrate", None))]
    if not needing:
        return 0
    if num_batches is not None:
        validate.integer("num_batches", num_batches, 1)
        batches = itertools.islice(batches, num_batches)
    count = 0
    with eval_mode(model), torch.no_grad(), contextlib.ExitStack() as stack:
        for imp in needing:
            stack.enter_context(imp.calibrate(model))  # type: ignore[attr-defined]
        for batch in tqdm(batches, desc=description, total=num_batches, unit="batch", disable=not progress,
                          file=sys.stderr, leave=False):
            model(images_of(batch))
            count += 1
    return count
