"""The sections of a recipe (model, data, train, prune, recover, export, benchmark), each checked on construction.

Errors are ``ValueError`` naming the key path, e.g. ``recipe: prune.alpha must be a finite number > 0, got -1``.

Examples:
    >>> PruneSpec(target_params=0.6).target_macs is None
    True
    >>> PruneSpec(alpha=-1)
    Traceback (most recent call last):
    ...
    ValueError: recipe: prune.alpha must be a finite number > 0, got -1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import timm
import timm.optim
import torch.nn as nn

from pfgdf_plugin._util import validate
from pfgdf_plugin.criteria import STATISTICS
from pfgdf_plugin.models.zoo import CifarResNet, CifarVGG

# Networks of pfgdf_plugin.models.zoo by recipe name (timm has no CIFAR-style 32x32 ResNets or VGG).
ZOO_MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"cifar_resnet{d}": partial(CifarResNet, depth=d) for d in (20, 32, 44, 56, 110)},
    "cifar_vgg16": CifarVGG,
}
METHODS: tuple[str, ...] = ("pfgdf", "chip")
# Set from the recipe's own keys; passing them in model.kwargs would silently fight those.
_RESERVED_KWARGS = ("num_classes", "in_chans", "pretrained")


def _key(path: str) -> str:
    """The name a check reports: ``recipe: prune.alpha``."""
    return f"recipe: {path}"


def _optimizer(path: str, value: object) -> str:
    """A timm optimizer name (checked when this timm can list them; older ones fail at training time)."""
    name = validate.text(_key(path), value)
    listed = getattr(timm.optim, "list_optimizers", None)  # timm >= 1.0.12
    if listed is not None and name not in listed():
        hint = validate.suggest(name, listed(), 3)
        raise ValueError(f"{validate.bad(_key(path), 'a timm optimizer name (sgd, adamw, ...)', value)}.{hint}"
                         .rstrip("."))
    return name


@dataclass(frozen=True)
class ModelSpec:
    """What to prune: a timm model name or a `ZOO_MODELS` name, optionally a checkpoint to start from.

    ``num_classes`` defaults to the data's label count, ``in_chans`` to the input size's channels. ``kwargs`` go
    to ``timm.create_model`` (e.g. ``img_size``, ``patch_size``) or the zoo constructor. ``checkpoint`` is a file
    written by `pfgdf_plugin.models.saved.save_pruned` or a plain ``state_dict`` (bare, or under a
    ``"state_dict"`` / ``"model"`` key) for the named model. Files holding pickled objects (pfgdf-plugin 0.1
    model files) load only with ``trust_pickle: true``: unpickling runs whatever code a file holds.
    """

    name: str = "resnet10t"
    num_classes: int | None = None
    in_chans: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        validate.boolean(_key("model.trust_pickle"), self.trust_pickle)
        name = validate.text(_key("model.name"), self.name)
        if name not in ZOO_MODELS:
            known = timm.list_models()
            if name not in known:
                hint = validate.suggest(name, [*known, *ZOO_MODELS])
                raise ValueError(f"recipe: model.name {name!r} is neither a timm model nor one of "
                                 f"{', '.join(ZOO_MODELS)}.{hint}".rstrip("."))
        validate.optional_int(_key("model.num_classes"), self.num_classes, 1)
        validate.optional_int(_key("model.in_chans"), self.in_chans, 1)
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise validate.bad(_key("model.kwargs"), "a mapping of keyword arguments", self.kwargs)
        reserved = sorted(set(self.kwargs) & set(_RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"recipe: model.kwargs may not set {', '.join(reserved)} (use model.num_classes / "
                             "model.in_chans; weights come from model.checkpoint, never a download)")
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "checkpoint", validate.optional_text(_key("model.checkpoint"), self.checkpoint))


@dataclass(frozen=True)
class DataSpec:
    """Images and labels: ``source`` is ``digits``, ``mnist``, an ImageFolder directory or a ``.pt`` file.

    Without ``val_source`` the shuffled ``source`` is split, ``train_fraction`` for training. ``limit`` caps the
    images read from each source; ``batch_size`` serves training, recalibration and fine-tuning.
    """

    source: str = "digits"
    val_source: str | None = None
    train_fraction: float = 0.8
    limit: int | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", validate.text(_key("data.source"), self.source))
        object.__setattr__(self, "val_source", validate.optional_text(_key("data.val_source"), self.val_source))
        fraction = validate.fraction(_key("data.train_fraction"), self.train_fraction, closed=False)
        object.__setattr__(self, "train_fraction", fraction)
        validate.optional_int(_key("data.limit"), self.limit, 1)
        validate.integer(_key("data.batch_size"), self.batch_size, 1)


@dataclass(frozen=True)
class TrainSpec:
    """Training before pruning. ``epochs``: 0 skips it (needs ``model.checkpoint``); default 6, or 0 with a
    checkpoint. ``opt`` is a timm optimizer name (``sgd``, ``adamw``, ...); the schedule is cosine."""

    epochs: int | None = None
    lr: float = 0.05
    opt: str = "sgd"

    def __post_init__(self) -> None:
        validate.optional_int(_key("train.epochs"), self.epochs, 0)
        object.__setattr__(self, "lr", validate.positive_float(_key("train.lr"), self.lr))
        _optimizer("train.opt", self.opt)


@dataclass(frozen=True)
class PruneSpec:
    """PFGDF's automated search (or CHIP): exactly one of ``target_macs``, ``target_params`` (fractions to keep)
    and ``alpha`` (the threshold); none means ``target_macs: 0.5``.

    ``statistic`` is PFGDF's per-filter statistic; ``round_to`` a channel multiple, ``"auto"`` (ONNX Runtime's
    fast conv block on this CPU) or ``None`` (exact); ``calib_batches`` the training batches CHIP calibrates on.
    Attention blocks lose head dimensions or whole heads (see `pfgdf_plugin.pruning.attention`).
    """

    method: str = "pfgdf"
    target_macs: float | None = None
    target_params: float | None = None
    alpha: float | None = None
    statistic: str = "l1"
    round_to: int | str | None = "auto"
    min_channels: int = 1
    calib_batches: int = 5

    def __post_init__(self) -> None:
        validate.one_of(_key("prune.method"), self.method, METHODS)
        given = [k for k in ("target_macs", "target_params", "alpha") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"recipe: prune takes exactly one of target_macs, target_params and alpha; got "
                             f"{' and '.join(given)} (with --set, clear one: prune.{given[0]}=null)")
        for key in ("target_macs", "target_params"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, validate.fraction(_key(f"prune.{key}"), getattr(self, key)))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", validate.positive_float(_key("prune.alpha"), self.alpha))
        if not given:
            object.__setattr__(self, "target_macs", 0.5)
        validate.one_of(_key("prune.statistic"), self.statistic, STATISTICS)
        if self.round_to is not None and self.round_to != "auto":
            try:
                validate.integer(_key("prune.round_to"), self.round_to, 1)
            except ValueError:
                raise validate.bad(_key("prune.round_to"), "an integer >= 1, 'auto' or null", self.round_to) from None
        validate.integer(_key("prune.min_channels"), self.min_channels, 1)
        validate.integer(_key("prune.calib_batches"), self.calib_batches, 1)


@dataclass(frozen=True)
class RecoverSpec:
    """Recovery after pruning: BatchNorm recalibration on ``recalibrate_batches`` training batches (0 skips; models
    without BatchNorm skip it), then ``finetune_epochs`` of fine-tuning (0 skips), distilling from the unpruned
    model with weight ``distill_weight`` when ``distill``; ``opt`` as in `TrainSpec`."""

    recalibrate_batches: int = 20
    finetune_epochs: int = 3
    lr: float = 0.02
    opt: str = "sgd"
    distill: bool = False
    distill_weight: float = 0.5

    def __post_init__(self) -> None:
        validate.integer(_key("recover.recalibrate_batches"), self.recalibrate_batches, 0)
        validate.integer(_key("recover.finetune_epochs"), self.finetune_epochs, 0)
        object.__setattr__(self, "lr", validate.positive_float(_key("recover.lr"), self.lr))
        _optimizer("recover.opt", self.opt)
        validate.boolean(_key("recover.distill"), self.distill)
        weight = validate.fraction(_key("recover.distill_weight"), self.distill_weight)
        object.__setattr__(self, "distill_weight", weight)


@dataclass(frozen=True)
class ExportSpec:
    """Exports of the pruned model: ONNX (both models, parity-checked; needed for latency), ORT format for ONNX
    Runtime Mobile (``ort_target_platform``), static INT8 calibrated on training images."""

    onnx: bool = True
    ort: bool = False
    ort_target_platform: str = "arm"
    int8: bool = False

    def __post_init__(self) -> None:
        for key in ("onnx", "ort", "int8"):
            validate.boolean(_key(f"export.{key}"), getattr(self, key))
        validate.one_of(_key("export.ort_target_platform"), self.ort_target_platform, ("arm", "amd64"))
        for key in ("ort", "int8"):
            if getattr(self, key) and not self.onnx:
                raise ValueError(f"recipe: export.{key} needs export.onnx: true (it converts the ONNX file)")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Latency on ONNX Runtime (CPU): ``runs`` timed runs per model at each intra-op thread count (0 skips)."""

    threads: tuple[int, ...] = (1,)
    runs: int = 50

    def __post_init__(self) -> None:
        threads = [self.threads] if isinstance(self.threads, int) and not isinstance(self.threads, bool) \
            else self.threads
        if not isinstance(threads, (list, tuple)) or not threads:
            raise validate.bad(_key("benchmark.threads"), "a thread count or a non-empty list of them", self.threads)
        object.__setattr__(self, "threads", tuple(validate.integer(_key("benchmark.threads"), t, 1) for t in threads))
        validate.integer(_key("benchmark.runs"), self.runs, 0)


__all__ = [
    "METHODS",
    "ZOO_MODELS",
    "BenchmarkSpec",
    "DataSpec",
    "ExportSpec",
    "ModelSpec",
    "PruneSpec",
    "RecoverSpec",
    "TrainSpec",
]
