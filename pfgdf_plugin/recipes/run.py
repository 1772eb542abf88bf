"""The whole job as one call: data, train or load, prune, recover, export, time, report, driven by a recipe.

A :class:`Recipe` says what to run (your model, your data, the pruning target, recovery, exports, the latency
protocol); :func:`run_job` runs it and writes a report folder: ``report.json``, ``report.md``, ``latency.png``,
``original.pt`` / ``pruned.pt`` and their ``.onnx`` exports (plus ``pruned.ort`` and ``pruned.int8.onnx`` when
asked). ``pfgdf demo`` is this job with a built-in recipe; ``pfgdf run --config recipe.yaml`` reads one from YAML.

Every value and the model name are checked when the recipe is built, files before any work starts; errors are
``ValueError`` (``FileNotFoundError`` for a missing path) naming the key path, e.g.
``recipe: prune.target_macs must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import timm.optim
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from pfgdf_plugin._util import io as _io
from pfgdf_plugin.criteria import STATISTICS, CHIPImportance, PFGDFImportance
from pfgdf_plugin.data import BUILTIN, load_dataset, split
from pfgdf_plugin.deploy.export import export_onnx, export_ort, quantize_int8
from pfgdf_plugin.measure.latency import benchmark_latency, recommended_round_to
from pfgdf_plugin.models.saved import load_pruned_with_metadata, save_pruned
from pfgdf_plugin.models.timm import create_model
from pfgdf_plugin.models.zoo import CifarResNet, CifarVGG
from pfgdf_plugin.pruning.api import PruneResult, prune
from pfgdf_plugin.recovery.finetune import FinetuneConfig, evaluate, finetune, recalibrate_bn

# Networks of pfgdf_plugin.models.zoo by recipe name (timm has no CIFAR-style 32x32 ResNets or VGG).
ZOO_MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"cifar_resnet{d}": partial(CifarResNet, depth=d) for d in (20, 32, 44, 56, 110)},
    "cifar_vgg16": CifarVGG,
}
METHODS: tuple[str, ...] = ("pfgdf", "chip")
# Set from the recipe's own keys; passing them in model.kwargs would silently fight those.
_RESERVED_KWARGS = ("num_classes", "in_chans", "pretrained")


# ------------------------------------------------------------------------------------------ checks


def _bad(path: str, what: str, value: object) -> ValueError:
    return ValueError(f"recipe: {path} must be {what}, got {value!r}")


def _int(path: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, f"an integer >= {minimum}", value)
    return value


def _opt_int(path: str, value: object, minimum: int) -> int | None:
    return None if value is None else _int(path, value, minimum)


def _number(path: str, value: object) -> float:
    # PyYAML reads `1e-3` (no dot) as a string: accept numeric strings rather than surprise users.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(path, "a finite number", value)
    return float(value)


def _positive(path: str, value: object) -> float:
    number = _number(path, value)
    if number <= 0:
        raise _bad(path, "> 0", value)
    return number


def _fraction(path: str, value: object, *, closed: bool = True) -> float:
    number = _number(path, value)
    if not (0.0 < number <= 1.0 if closed else 0.0 < number < 1.0):
        raise _bad(path, "in (0, 1]" if closed else "in (0, 1)", value)
    return number


def _bool(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "true or false", value)
    return value


def _str(path: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _bad(path, "a non-empty string", value)
    return value


def _opt_str(path: str, value: object) -> str | None:
    return None if value is None else _str(path, value)


def _choice(path: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise _bad(path, f"one of {', '.join(map(repr, allowed))}", value)
    return value  # type: ignore[return-value]


def _size(path: str, value: object) -> tuple[int, int, int]:
    """``32`` -> (3, 32, 32); ``[32, 48]`` / ``"32x48"`` -> (3, 32, 48); ``[1, 28, 28]`` / ``"1x28x28"``."""
    parts: object = value
    if isinstance(value, str):
        try:
            parts = [int(p) for p in value.lower().split("x")]
        except ValueError:
            parts = None
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    if isinstance(parts, (list, tuple)) and all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        dims = [3, parts[0], parts[0]] if len(parts) == 1 else [3, *parts] if len(parts) == 2 else list(parts)
        if len(dims) == 3 and min(dims) >= 1:
            return (dims[0], dims[1], dims[2])
    raise _bad(path, "SIZE, [H, W] or [C, H, W] (or 'CxHxW') with positive integers", value)


# ------------------------------------------------------------------------------------------ recipe


@dataclass(frozen=True)
class ModelSpec:
    """What to prune: a timm model name or a :data:`ZOO_MODELS` name, optionally a checkpoint to start from.

    ``num_classes`` defaults to the data's label count, ``in_chans`` to the input size's channels. ``kwargs`` go
    to ``timm.create_model`` (e.g. ``img_size``, ``patch_size``) or the zoo constructor. ``checkpoint`` is a file
    written by :func:`~pfgdf_plugin.models.saved.save_pruned` (the whole model; unpickled, so trusted files
    only) or a plain ``state_dict`` (bare, or under a ``"state_dict"`` / ``"model"`` key) for the named model.
    """

    name: str = "resnet10t"
    num_classes: int | None = None
    in_chans: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        name = _str("model.name", self.name)
        if name not in ZOO_MODELS:
            known = timm.list_models()
            if name not in known:
                close = difflib.get_close_matches(name, [*known, *ZOO_MODELS], n=5, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"recipe: model.name {name!r} is neither a timm model nor one of "
                                 f"{', '.join(ZOO_MODELS)}{hint}")
        _opt_int("model.num_classes", self.num_classes, 1)
        _opt_int("model.in_chans", self.in_chans, 1)
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise _bad("model.kwargs", "a mapping of keyword arguments", self.kwargs)
        reserved = sorted(set(self.kwargs) & set(_RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"recipe: model.kwargs may not set {', '.join(reserved)} (use model.num_classes / "
                             "model.in_chans; weights come from model.checkpoint, never a download)")
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "checkpoint", _opt_str("model.checkpoint", self.checkpoint))


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
        object.__setattr__(self, "source", _str("data.source", self.source))
        object.__setattr__(self, "val_source", _opt_str("data.val_source", self.val_source))
        object.__setattr__(self, "train_fraction", _fraction("data.train_fraction", self.train_fraction,
                                                             closed=False))
        _opt_int("data.limit", self.limit, 1)
        _int("data.batch_size", self.batch_size, 1)


def _optimizer(path: str, value: object) -> str:
    listed = getattr(timm.optim, "list_optimizers", None)  # timm >= 1.0.12; older ones fail at training time
    if listed is not None and value not in listed():
        close = difflib.get_close_matches(str(value), listed(), n=3)
        raise _bad(path, "a timm optimizer name (sgd, adamw, ...)" + (f"; did you mean {', '.join(close)}?"
                                                                      if close else ""), value)
    return _str(path, value)


@dataclass(frozen=True)
class TrainSpec:
    """Training before pruning. ``epochs``: 0 skips it (needs ``model.checkpoint``); default 6, or 0 with a
    checkpoint. ``opt`` is a timm optimizer name (``sgd``, ``adamw``, ...); the schedule is cosine."""

    epochs: int | None = None
    lr: float = 0.05
    opt: str = "sgd"

    def __post_init__(self) -> None:
        _opt_int("train.epochs", self.epochs, 0)
        object.__setattr__(self, "lr", _positive("train.lr", self.lr))
        _optimizer("train.opt", self.opt)


@dataclass(frozen=True)
class PruneSpec:
    """PFGDF's automated search (or CHIP): exactly one of ``target_macs``, ``target_params`` (fractions to keep)
    and ``alpha`` (the threshold); none means ``target_macs: 0.5``.

    ``statistic`` is PFGDF's per-filter statistic; ``round_to`` a channel multiple, ``"auto"`` (ONNX Runtime's
    fast conv block on this CPU) or ``None`` (exact); ``calib_batches`` the training batches CHIP calibrates on.
    Attention blocks always lose whole heads (see :func:`~pfgdf_plugin.pruning.api.prune`).
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
        _choice("prune.method", self.method, METHODS)
        given = [k for k in ("target_macs", "target_params", "alpha") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"recipe: prune takes exactly one of target_macs, target_params and alpha; got "
                             f"{' and '.join(given)} (with --set, clear one: prune.{given[0]}=null)")
        for key in ("target_macs", "target_params"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, _fraction(f"prune.{key}", getattr(self, key)))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", _positive("prune.alpha", self.alpha))
        if not given:
            object.__setattr__(self, "target_macs", 0.5)
        _choice("prune.statistic", self.statistic, STATISTICS)
        if self.round_to is not None and self.round_to != "auto":
            if isinstance(self.round_to, str):
                raise _bad("prune.round_to", "an integer >= 1, 'auto' or null", self.round_to)
            _int("prune.round_to", self.round_to, 1)
        _int("prune.min_channels", self.min_channels, 1)
        _int("prune.calib_batches", self.calib_batches, 1)


@dataclass(frozen=True)
class RecoverSpec:
    """Recovery after pruning: BatchNorm recalibration on ``recalibrate_batches`` training batches (0 skips; models
    without BatchNorm skip it), then ``finetune_epochs`` of fine-tuning (0 skips), distilling from the unpruned
    model with weight ``distill_weight`` when ``distill``; ``opt`` as in :class:`TrainSpec`."""

    recalibrate_batches: int = 20
    finetune_epochs: int = 3
    lr: float = 0.02
    opt: str = "sgd"
    distill: bool = False
    distill_weight: float = 0.5

    def __post_init__(self) -> None:
        _int("recover.recalibrate_batches", self.recalibrate_batches, 0)
        _int("recover.finetune_epochs", self.finetune_epochs, 0)
        object.__setattr__(self, "lr", _positive("recover.lr", self.lr))
        _optimizer("recover.opt", self.opt)
        _bool("recover.distill", self.distill)
        object.__setattr__(self, "distill_weight", _fraction("recover.distill_weight", self.distill_weight))


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
            _bool(f"export.{key}", getattr(self, key))
        _choice("export.ort_target_platform", self.ort_target_platform, ("arm", "amd64"))
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
            raise _bad("benchmark.threads", "a thread count or a non-empty list of them", self.threads)
        object.__setattr__(self, "threads", tuple(_int("benchmark.threads", t, 1) for t in threads))
        _int("benchmark.runs", self.runs, 0)


_SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec, "prune": PruneSpec,
                              "recover": RecoverSpec, "export": ExportSpec, "benchmark": BenchmarkSpec}


@dataclass(frozen=True)
class Recipe:
    """Everything :func:`run_job` does, checked on construction. The defaults are ``pfgdf demo``'s job.

    Sections may be given as their dataclasses or as mappings (``prune={"target_macs": 0.3}``). ``input_size`` is
    ``(channels, height, width)`` (also given as ``32``, ``[H, W]`` or ``"CxHxW"``); relative paths are relative to
    the working directory.

    Example:
        >>> recipe = Recipe.from_dict({"model": {"name": "cifar_resnet20"}, "input_size": [3, 32, 32],
        ...                            "prune": {"target_params": 0.6}})
        >>> recipe.prune.target_params, recipe.prune.target_macs, recipe.train.epochs
        (0.6, None, 6)
        >>> Recipe.from_dict({"prune": {"target_macs": 1.5}})
        Traceback (most recent call last):
        ...
        ValueError: recipe: prune.target_macs must be in (0, 1], got 1.5
    """

    name: str = "pfgdf run"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    input_size: tuple[int, int, int] = (1, 16, 16)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    recover: RecoverSpec = field(default_factory=RecoverSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    output_dir: str = "pfgdf-out"
    seed: int = 0

    def __post_init__(self) -> None:
        _str("name", self.name)
        for key, kind in _SECTIONS.items():
            value = getattr(self, key)
            if value is None:  # an empty section in YAML (`train:` alone) means its defaults
                value = kind()
            elif isinstance(value, Mapping):
                _unknown(f"{key}.", value, {f.name for f in dataclasses.fields(kind)})
                value = kind(**value)
            elif not isinstance(value, kind):
                raise _bad(key, f"a mapping of keys (or a {kind.__name__})", value)
            object.__setattr__(self, key, value)
        size = _size("input_size", self.input_size)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "output_dir", _str("output_dir", self.output_dir))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _bad("seed", "an integer", self.seed)
        if self.model.in_chans is not None and self.model.in_chans != size[0]:
            raise ValueError(f"recipe: model.in_chans is {self.model.in_chans} but input_size has {size[0]} "
                             "channels; give the channels in input_size, e.g. [1, 28, 28]")
        if self.train.epochs is None:
            epochs = 0 if self.model.checkpoint else 6
            object.__setattr__(self, "train", dataclasses.replace(self.train, epochs=epochs))
        elif self.train.epochs == 0 and not self.model.checkpoint:
            raise ValueError("recipe: train.epochs is 0 but there is no model.checkpoint to start from; "
                             "train for >= 1 epoch or give a checkpoint")
        if self.benchmark.runs and not self.export.onnx:
            raise ValueError("recipe: benchmark.runs > 0 needs export.onnx: true (latency is measured on ONNX "
                             "Runtime); set benchmark.runs: 0 to skip timing")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Recipe:
        """A recipe from nested mappings (a parsed YAML file), after ``overrides`` (``"key.path=value"``,
        the value read as YAML). Unknown keys and bad values raise ``ValueError`` naming the key path."""
        if not isinstance(data, Mapping):
            raise ValueError(f"recipe: expected a mapping of keys at the top level, got {type(data).__name__}")
        data = apply_overrides(data, overrides)
        _unknown("", data, {f.name for f in dataclasses.fields(cls)})
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
        """Read a recipe file (YAML, ``yaml.safe_load``); see :meth:`from_dict`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not YAML, not a mapping, an unknown key or a bad value.
        """
        import yaml  # here, not at the top: the Python API (Recipe(...), run_job) works without PyYAML

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe: no recipe file at {str(path)!r}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"recipe: {str(path)!r} is not valid YAML: {err}") from err
        if data is None:
            raise ValueError(f"recipe: {str(path)!r} is empty")
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON/YAML-ready values (tuples as lists); ``from_dict`` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        """The recipe as YAML text, every key shown with its resolved value."""
        import yaml

        class Dumper(yaml.SafeDumper):
            pass

        # Sections as blocks, lists inline: [3, 32, 32] reads like the recipes people write.
        Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
        return yaml.dump(self.to_dict(), Dumper=Dumper, sort_keys=False)

    def check_files(self) -> None:
        """Raise ``FileNotFoundError`` for a data source or checkpoint that does not exist, ``ValueError`` for an
        output directory that is a file; :func:`run_job` calls this before any work."""
        for key, value in (("data.source", self.data.source), ("data.val_source", self.data.val_source)):
            if value is not None and value not in BUILTIN and not Path(value).exists():
                raise FileNotFoundError(f"recipe: {key} {value!r} is neither a built-in dataset "
                                        f"({', '.join(BUILTIN)}) nor an existing ImageFolder directory or .pt file")
        if self.model.checkpoint and not Path(self.model.checkpoint).is_file():
            raise FileNotFoundError(f"recipe: model.checkpoint: no file at {self.model.checkpoint!r}")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"recipe: output_dir {self.output_dir!r} exists and is not a directory")


def _unknown(prefix: str, data: Mapping[str, Any], known: set[str]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known: {', '.join(sorted(known))}"
            raise ValueError(f"recipe: unknown key {prefix}{key}{hint}")


def _plain(value: Any) -> Any:
    """A deep copy with every mapping a plain dict (overrides write into it)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``"key.path=value"`` set (the value parsed as YAML: ``0.4``, ``null``,
    ``[1, 4]``); missing sections are created, so an unknown key is reported by :meth:`Recipe.from_dict`.

    Example:
        >>> apply_overrides({"train": {"epochs": 5}}, ["train.epochs=1", "benchmark.threads=[1, 2]"])
        {'train': {'epochs': 1}, 'benchmark': {'threads': [1, 2]}}
    """
    import yaml

    result = _plain(data)
    for item in overrides:
        key, sep, text = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"recipe: override {item!r} must look like key.path=value, e.g. train.epochs=1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"recipe: override {item!r}: the value is not valid YAML ({err})") from err
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"recipe: override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


# ------------------------------------------------------------------------------------------ the job


@dataclass
class JobResult:
    """What :func:`execute_job` did: the summary written to ``report.json``, the prune result, the files written
    (``reports``: report.json, report.md, latency.png; ``models``: .pt, .onnx, .ort files)."""

    summary: dict[str, Any]
    prune: PruneResult
    output_dir: Path
    reports: list[Path]
    models: list[Path]

    def table(self) -> str:
        """The before/after table ``pfgdf demo`` and ``pfgdf run`` print."""
        return summary_table(self.summary)

    def text(self) -> str:
        """Per-group pruning table, before/after table and where the files are: what the CLI prints."""
        return (f"{self.prune.table()}\n\n{self.table()}\n\nreport: {', '.join(map(str, self.reports))}; "
                f"models: {', '.join(map(str, self.models))}")


def run_job(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Run ``recipe`` and return the summary it writes to ``<output_dir>/report.json``.

    Stages: load the data; build the model (or load ``model.checkpoint``) and train it; prune it; recalibrate
    BatchNorm and fine-tune; export both models to ONNX (checked against PyTorch); time them on ONNX Runtime;
    write ``report.json``, ``report.md``, ``latency.png`` and the models. ``progress`` logs stages and progress
    bars on stderr.

    Example:
        >>> import tempfile
        >>> recipe = Recipe.from_dict({"input_size": [1, 8, 8], "data": {"limit": 400},
        ...     "train": {"epochs": 1}, "recover": {"finetune_epochs": 1}, "benchmark": {"runs": 5},
        ...     "output_dir": tempfile.mkdtemp()})
        >>> macs = run_job(recipe, progress=False)["macs"]
        >>> abs(macs["after"] / macs["before"] - 0.5) <= 0.01
        True
    """
    return execute_job(recipe, progress=progress).summary


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def execute_job(recipe: Recipe, *, progress: bool = True) -> JobResult:
    """:func:`run_job`, returning the :class:`JobResult` (summary, prune result, files) instead of the summary."""
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    recipe.check_files()
    start = time.perf_counter()
    out = Path(recipe.output_dir)
    size, seed, spec = recipe.input_size, recipe.seed, recipe.model
    log = partial(_log, progress)
    torch.manual_seed(seed)

    log(f"[1/6] data: {recipe.data.source} at {size}")
    dataset = load_dataset(recipe.data.source, size, limit=recipe.data.limit, seed=seed)
    if recipe.data.val_source is None:
        train, val = split(dataset, recipe.data.train_fraction)
    else:
        train, val = dataset, load_dataset(recipe.data.val_source, size, limit=recipe.data.limit, seed=seed)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"recipe: data: {len(train)} training and {len(val)} validation images; need both "
                         "(more images, data.limit, or data.train_fraction)")
    labels = int(max(train.tensors[1].max(), val.tensors[1].max())) + 1
    n_classes = spec.num_classes or labels
    if n_classes < labels:
        raise ValueError(f"recipe: model.num_classes is {n_classes} but the data has labels up to {labels - 1}")
    loader = DataLoader(train, recipe.data.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val, 256)

    model, how = _load_model(spec, n_classes, size[0])
    x = torch.randn(1, *size)
    _check_output(model, x, n_classes)
    epochs = recipe.train.epochs or 0
    if epochs:
        log(f"[2/6] training {spec.name} {how} ({epochs} epoch{'s' * (epochs > 1)}, {len(train)} images)")
        config = FinetuneConfig(epochs=epochs, lr=recipe.train.lr, opt=recipe.train.opt, seed=seed)
        base = finetune(model, loader, val_loader, config, progress=progress)
        base_accuracy, base_history = base.best_accuracy, base.history
    else:
        log(f"[2/6] {spec.name} {how}, no training (train.epochs: 0)")
        base_accuracy, base_history = evaluate(model, val_loader), []

    p = recipe.prune
    round_to = recommended_round_to() if p.round_to == "auto" else p.round_to
    goal = (f"to keep {p.target_macs:.0%} of MACs" if p.target_macs is not None else
            f"to keep {p.target_params:.0%} of parameters" if p.target_params is not None else f"at alpha {p.alpha:g}")
    log(f"[3/6] pruning with {p.method.upper()} {goal}")
    if p.method == "chip":
        importance: Any = CHIPImportance()
        with importance.calibrate(model):
            for images, _ in itertools.islice(DataLoader(train, recipe.data.batch_size), p.calib_batches):
                model(images)
    else:
        importance = PFGDFImportance(statistic=p.statistic)
    result = prune(model, x, alpha=p.alpha, target_macs=p.target_macs, target_params=p.target_params,
                   importance=importance, round_to=round_to, min_channels=p.min_channels, progress=progress)
    pruned = result.model
    stale = evaluate(pruned, val_loader)

    r = recipe.recover
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pruned.modules())
    steps = ["recalibrating BatchNorm"] if r.recalibrate_batches and has_bn else []
    if r.finetune_epochs:
        plural = "s" * (r.finetune_epochs > 1)
        steps.append(f"fine-tuning ({r.finetune_epochs} epoch{plural}{', distilled' if r.distill else ''})")
    log("[4/6] " + (", ".join(steps) or "no recovery"))
    recalibrated = None
    if r.recalibrate_batches and has_bn:
        recalibrate_bn(pruned, loader, num_batches=r.recalibrate_batches)
        recalibrated = evaluate(pruned, val_loader)
    tuned_accuracy, tuned_history = recalibrated if recalibrated is not None else stale, []
    if r.finetune_epochs:
        config = FinetuneConfig(epochs=r.finetune_epochs, lr=r.lr, opt=r.opt, seed=seed,
                                distill_weight=r.distill_weight if r.distill else 0.0)
        tuned = finetune(pruned, loader, val_loader, config, teacher=model if r.distill else None, progress=progress)
        tuned_accuracy, tuned_history = tuned.best_accuracy, tuned.history

    e, b = recipe.export, recipe.benchmark
    exports: dict[str, Any] = {}
    reports, models = [out / "report.json", out / "report.md"], [out / "original.pt", out / "pruned.pt"]
    bench, parity = None, None
    if e.onnx:
        timing = f" and measuring latency (ONNX Runtime, {_threads(b.threads)}, {b.runs} runs)" if b.runs else ""
        log(f"[5/6] exporting to ONNX{timing}")
        onnx_original = export_onnx(model, out / "original.onnx", size)
        onnx_pruned = export_onnx(pruned, out / "pruned.onnx", size)
        exports["onnx"] = {"original": onnx_original.to_dict(), "pruned": onnx_pruned.to_dict()}
        parity = {"original": onnx_original.parity.relative_error, "pruned": onnx_pruned.parity.relative_error}
        models += [onnx_original.path, onnx_pruned.path]
        timed = {"pruned": onnx_pruned.path}
        if e.ort:
            ort = export_ort(onnx_pruned.path, out, target_platform=e.ort_target_platform, reference=pruned)
            exports["ort"] = ort.to_dict()
            models.append(ort.path)
        if e.int8:
            calib = train.tensors[0][:160]  # quantize_int8's default 5 batches of 32
            q = quantize_int8(onnx_pruned.path, out / "pruned.int8.onnx", calib,
                              calibration_label=f"{len(calib)} training images of {recipe.data.source}")
            exports["int8"] = q.to_dict()
            models.append(q.path)
            timed["pruned.int8"] = q.path
        if b.runs:
            bench = benchmark_latency(timed, baseline=onnx_original.path, threads=b.threads, runs=b.runs,
                                      seed=seed)
            reports.append(bench.plot(out / "latency.png"))
    else:
        log("[5/6] no export (export.onnx: false)")

    log(f"[6/6] writing {out}/")
    # pfgdf export / bench rebuild the unpruned model from "timm_model", which must then need nothing else.
    if spec.name in ZOO_MODELS or spec.kwargs:
        meta: dict[str, Any] = {"model": spec.name, "model_kwargs": spec.kwargs}
    else:
        meta = {"timm_model": spec.name}
    meta |= {"num_classes": n_classes, "in_chans": size[0], "input_size": list(size)}
    save_pruned(pruned, out / "pruned.pt", metadata=meta)
    save_pruned(model, out / "original.pt", metadata=meta)

    latency = None
    if bench is not None:
        latency = {str(t): {k: {"median": bench.measurement(k, t).median_ms, "p90": bench.measurement(k, t).p90_ms}
                            for k in ("original", *timed)} for t in b.threads}
    first = None if bench is None else bench.measurement("pruned", b.threads[0])
    one = None if bench is None or 1 not in b.threads else bench.measurement("pruned", 1)
    summary = {
        "name": recipe.name, "model": spec.name, "data": recipe.data.source, "val_data": recipe.data.val_source,
        "input_size": list(size),
        "num_classes": n_classes, "train_images": len(train), "val_images": len(val), "method": p.method,
        "alpha": result.alpha, "target_macs": p.target_macs, "target_params": p.target_params,
        "round_to": round_to,
        "accuracy": {"unpruned": base_accuracy, "pruned_before_recalibration": stale,
                     "pruned_after_recalibration": recalibrated, "pruned_after_finetuning": tuned_accuracy},
        "params": {"before": result.params_before, "after": result.params_after},
        "macs": {"before": result.macs_before, "after": result.macs_after},
        # The demo's keys at 1 thread, and every thread count of benchmark.threads (the table shows the first).
        "latency_ms_1_thread": None if one is None else latency["1"],
        "speedup_1_thread": None if one is None else one.speedup,
        "efficiency_1_thread": None if one is None else one.efficiency,
        "latency_ms": latency,
        "latency_threads": None if first is None else first.threads,
        "speedup": None if first is None else first.speedup,
        "efficiency": None if first is None else first.efficiency,
        "onnx_parity_relative_error": parity,
        "exports": exports,
        "benchmark": None if bench is None else bench.to_dict(),
        "seconds": time.perf_counter() - start,
        "training_history": base_history, "finetune_history": tuned_history,
        "prune_report": result.to_dict(),
        "recipe": recipe.to_dict(),
    }
    _io.write_text(out / "report.json", json.dumps(summary, indent=2) + "\n")
    _io.write_text(out / "report.md", f"# {recipe.name}\n\n" + summary_markdown(summary) + "\n")
    return JobResult(summary=summary, prune=result, output_dir=out, reports=reports, models=models)


def _load_model(spec: ModelSpec, num_classes: int, in_chans: int) -> tuple[nn.Module, str]:
    """The model to prune, and where it came from (for the log)."""
    state = None
    if spec.checkpoint:
        try:
            state = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)
        except Exception:  # not plain tensors: a whole pickled model, as save_pruned writes
            state = None
        if state is None:
            try:
                model, _ = load_pruned_with_metadata(spec.checkpoint)
            except ValueError as err:
                raise ValueError(f"recipe: model.checkpoint: {err}; expected a save_pruned file or a "
                                 "state_dict") from err
            return model, f"from {spec.checkpoint}"
    try:
        if spec.name in ZOO_MODELS:
            model = ZOO_MODELS[spec.name](num_classes=num_classes, in_chans=in_chans, **spec.kwargs)
        elif spec.kwargs:
            model = timm.create_model(spec.name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                      **spec.kwargs)
        else:
            model = create_model(spec.name, num_classes=num_classes, in_chans=in_chans)
    except TypeError as err:  # a keyword the constructor does not take
        raise ValueError(f"recipe: model.kwargs {spec.kwargs} do not fit {spec.name!r}: {err}") from err
    if not spec.checkpoint:
        return model, "from scratch"
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):  # timm's / Lightning's wrappers, and recover.finetune's last.pt
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"recipe: model.checkpoint {spec.checkpoint!r} holds no state_dict (a mapping of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"recipe: model.checkpoint {spec.checkpoint!r} does not fit model {spec.name!r} with "
                         f"num_classes={num_classes}, in_chans={in_chans}: {err}") from err
    return model, f"from the weights in {spec.checkpoint}"


def _check_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ValueError(f"recipe: input_size {tuple(x.shape[1:])}: the model cannot run on it: {err}") from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"recipe: the model outputs {shape} for one image; a classifier of {num_classes} classes "
                         "must output (1, classes)")


def _threads(threads: Sequence[int]) -> str:
    return ", ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    acc = s["accuracy"]
    source = s.get("val_data") or s["data"]
    data = source if source in BUILTIN else "/".join(Path(source).parts[-2:])
    rows = [
        (f"val accuracy ({data})", _pct(acc["unpruned"]), _pct(acc["pruned_after_finetuning"])),
        ("  pruned, stale BatchNorm", "", _pct(acc["pruned_before_recalibration"])),
        ("  pruned, recalibrated", "", _pct(acc["pruned_after_recalibration"])),
        ("parameters", f"{s['params']['before']:,}", f"{s['params']['after']:,}"),
        ("MACs", f"{s['macs']['before']:,.0f}", f"{s['macs']['after']:,.0f}"),
    ]
    if s["latency_ms"] is not None:
        t = s["latency_threads"]
        lat = s["latency_ms"][str(t)]
        rows.append((f"latency, {_threads([t])} (ms)", f"{lat['original']['median']:.3f}",
                     f"{lat['pruned']['median']:.3f}"))
        if "pruned.int8" in lat:
            rows.append(("  pruned, INT8 (ms)", "", f"{lat['pruned.int8']['median']:.3f}"))
    return rows


def _latency_line(s: dict[str, Any], markdown: bool) -> str:
    alpha = f"{s['method'].upper()} alpha {s['alpha']:.4f}; total {s['seconds']:.0f} s"
    if s["latency_ms"] is None:
        return alpha
    eff = "n/a" if s["efficiency"] is None else f"{s['efficiency']:.2f}"
    at = f"{s['speedup']:.2f}x at {_threads([s['latency_threads']])}"
    if markdown:
        return f"Speed-up {at} on ONNX Runtime (efficiency {eff}); {alpha}"
    return f"speed-up {at} (ONNX Runtime; efficiency {eff} of the MACs reduction); {alpha}"


def summary_table(summary: dict[str, Any]) -> str:
    """The before/after table of a :func:`run_job` summary, as plain text."""
    lines = [f"{'':28}{'before':>14}{'after':>14}"]
    lines += [f"{a:28}{b:>14}{c:>14}" for a, b, c in _rows(summary)]
    lines.append(_latency_line(summary, markdown=False))
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The before/after table of a :func:`run_job` summary, as Markdown (the body of ``report.md``)."""
    lines = ["| | before | after |", "| --- | ---: | ---: |"]
    lines += [f"| {a.strip()} | {b} | {c} |" for a, b, c in _rows(summary)]
    line = _latency_line(summary, markdown=True)
    text = "\n".join(lines) + f"\n\n{line[0].upper()}{line[1:]}.\n"
    if summary["latency_ms"] is not None:
        text += "\n![latency against MACs](latency.png)\n"
    return text


__all__ = [
    "METHODS",
    "ZOO_MODELS",
    "BenchmarkSpec",
    "DataSpec",
    "ExportSpec",
    "JobResult",
    "ModelSpec",
    "PruneSpec",
    "Recipe",
    "RecoverSpec",
    "TrainSpec",
    "apply_overrides",
    "execute_job",
    "run_job",
    "summary_markdown",
    "summary_table",
]
