"""The recipe: what `run_job` runs, as frozen dataclasses checked on construction, read from YAML or mappings.

Every value and the model name are checked when the recipe is built, files by `Recipe.check_files` and
``model.kwargs`` by `Recipe.check_model` before any work starts; errors are ``ValueError`` (``FileNotFoundError``
for a missing path) naming the key path, e.g.
``recipe: prune.target_macs must be a number in (0, 1] (the fraction to keep), got 1.5``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfgdf_plugin._util import validate
from pfgdf_plugin.data import BUILTIN, image_folder_classes
from pfgdf_plugin.recipes.sections import (
    BenchmarkSpec,
    DataSpec,
    ExportSpec,
    ModelSpec,
    PruneSpec,
    RecoverSpec,
    TrainSpec,
)

_SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec, "prune": PruneSpec,
                              "recover": RecoverSpec, "export": ExportSpec, "benchmark": BenchmarkSpec}


OUTPUT_FILES: tuple[str, ...] = (
    "pruned.pt", "original.pt", "report.json", "report.md", "latency.png", "pruned.onnx", "original.onnx",
    "pruned.int8.onnx", "pruned.ort", "pruned.int8.ort",
)
"""The files a run writes into ``output_dir``."""


@dataclass(frozen=True)
class Recipe:
    """Everything `run_job` does, checked on construction. The defaults are ``pfgdf demo``'s job.

    Sections may be given as their dataclasses or as mappings (``prune={"target_macs": 0.3}``). ``input_size`` is
    ``(channels, height, width)`` (also given as ``32``, ``[H, W]`` or ``"CxHxW"``); relative paths are relative to
    the working directory.

    Examples:
        >>> recipe = Recipe.from_dict({"model": {"name": "cifar_resnet20"}, "input_size": [3, 32, 32],
        ...                            "prune": {"target_params": 0.6}})
        >>> recipe.prune.target_params, recipe.prune.target_macs, recipe.train.epochs
        (0.6, None, 6)
        >>> Recipe.from_dict({"prune": {"target_macs": 1.5}})
        Traceback (most recent call last):
        ...
        ValueError: recipe: prune.target_macs must be a number in (0, 1] (the fraction to keep), got 1.5
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
        validate.text("recipe: name", self.name)
        for key, kind in _SECTIONS.items():
            object.__setattr__(self, key, _section(key, kind, getattr(self, key)))
        size = validate.input_size("recipe: input_size", self.input_size)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "output_dir", validate.text("recipe: output_dir", self.output_dir))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise validate.bad("recipe: seed", "an integer", self.seed)
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Checks across sections; fills ``train.epochs`` (0 with a checkpoint, else 6)."""
        size = self.input_size
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
        the value read as YAML).

        Raises:
            ValueError: an unknown key or a bad value, naming the key path.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"recipe: expected a mapping of keys at the top level, got {type(data).__name__}")
        data = apply_overrides(data, overrides)
        _unknown("", data, {f.name for f in dataclasses.fields(cls)})
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Recipe:
        """Read a recipe file (YAML, ``yaml.safe_load`` within the limits of `pfgdf_plugin.recipes.safe_yaml`: at
        most 1 MiB, at most 10,000 values with aliases expanded); see `Recipe.from_dict`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not YAML, over the limits, not a mapping, an unknown key or a bad value.
        """
        # PyYAML is imported there, not at the top: the Python API (Recipe(...), run_job) works without it.
        from pfgdf_plugin.recipes.safe_yaml import read_yaml_file

        path = Path(path)
        data = read_yaml_file(path, "recipe")
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
        """Check the paths before any work (`run_job` calls this).

        Raises:
            FileNotFoundError: a data source or checkpoint that does not exist.
            ValueError: an output directory that is a file; an ImageFolder with fewer than two classes, or a
                validation folder whose classes differ from the training folder's.
        """
        for key, value in (("data.source", self.data.source), ("data.val_source", self.data.val_source)):
            if value is not None and value not in BUILTIN and not Path(value).exists():
                raise FileNotFoundError(f"recipe: {key} {value!r} is neither a built-in dataset "
                                        f"({', '.join(BUILTIN)}) nor an existing ImageFolder directory or .pt file")
        if self.model.checkpoint and not Path(self.model.checkpoint).is_file():
            raise FileNotFoundError(f"recipe: model.checkpoint: no file at {self.model.checkpoint!r}")
        out = validate.output_directory("recipe: output_dir", self.output_dir)
        # An input stored in output_dir under a name the run writes would be overwritten by the run's own output.
        inputs = [self.model.checkpoint, self.data.source, self.data.val_source]
        validate.distinct([p for p in inputs if p and p not in BUILTIN], [out / name for name in OUTPUT_FILES])
        self._check_folders()

    def _check_folders(self) -> None:
        """ImageFolder sources: training needs two classes or more; a validation folder needs the same ones
        (ImageFolder numbers classes by their sorted folder names, so a missing folder would shift every label)."""
        source, val = (None if v is None or v in BUILTIN or not Path(v).is_dir() else Path(v)
                       for v in (self.data.source, self.data.val_source))
        if source is not None:
            classes = image_folder_classes(source)
            if len(classes) < 2:
                raise ValueError(f"recipe: data.source {str(source)!r} holds {len(classes)} class folder(s) "
                                 f"{classes}; a classifier needs two classes or more (one folder per class, "
                                 "root/<class>/<image>): with one, every prediction is right and accuracy means "
                                 "nothing")
            if val is not None and image_folder_classes(val) != classes:
                raise ValueError(f"recipe: data.val_source {str(val)!r} has class folders "
                                 f"{image_folder_classes(val)} but data.source has {classes}; both need the same "
                                 "folders (labels are numbered by sorted folder name)")

    def check_model(self) -> None:
        """Build the model once on PyTorch's meta device (no memory, no weights): wrong ``model.kwargs`` fail here,
        before any work (`run_job` and ``pfgdf run --dry-run`` call this).

        Raises:
            ValueError: ``model.kwargs`` do not fit the model's constructor.
        """
        from pfgdf_plugin.recipes.model import check_buildable

        check_buildable(self.model, self.model.num_classes or 2, self.input_size[0])


def _section(key: str, kind: type, value: object) -> object:
    """One section as its dataclass, from a mapping, the dataclass itself, or ``None`` (its defaults)."""
    if value is None:  # an empty section in YAML (`train:` alone) means its defaults
        return kind()
    if isinstance(value, Mapping):
        _unknown(f"{key}.", value, {f.name for f in dataclasses.fields(kind)})
        return kind(**value)
    if not isinstance(value, kind):
        raise validate.bad(f"recipe: {key}", f"a mapping of keys (or a {kind.__name__})", value)
    return value


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
    ``[1, 4]``); missing sections are created, so an unknown key is reported by `Recipe.from_dict`.

    Raises:
        ValueError: an override that is not ``key.path=value``, whose value is not YAML, or that goes below a value.

    Examples:
        >>> apply_overrides({"train": {"epochs": 5}}, ["train.epochs=1", "benchmark.threads=[1, 2]"])
        {'train': {'epochs': 1}, 'benchmark': {'threads': [1, 2]}}
    """
    from pfgdf_plugin.recipes.safe_yaml import load_yaml

    result = _plain(data)
    for item in overrides:
        key, sep, text = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"recipe: override {item!r} must look like key.path=value, e.g. train.epochs=1")
        value = load_yaml(text, f"recipe: override {item!r}: the value")
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


__all__ = ["Recipe", "apply_overrides"]
