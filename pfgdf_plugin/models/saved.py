"""Save and load pruned models in a format that never runs code when read.

A file (format ``pfgdf-pruned-model``, version 2) is a ``torch.save`` payload that ``torch.load(...,
weights_only=True)`` reads: plain tensors and one JSON text. The JSON holds the architecture record (see
`pfgdf_plugin.models.architecture`), each module's plain attributes, the `ModelMeta`, and the versions that
wrote it. Loading rebuilds the unpruned architecture (timm, a zoo network, or the ``model=`` you pass), applies
the recorded channel changes, puts the tensors in place and checks that every name matches and that the model
runs at its recorded input size.

Files of version 1 (pickled whole modules) and any other pickle load only with ``trust_pickle=True``, with a
warning: unpickling a file can run arbitrary code.

Examples:
    >>> import os, tempfile, timm, torch
    >>> from pfgdf_plugin import prune
    >>> net = timm.create_model("resnet10t", num_classes=4)
    >>> pruned = prune(net, torch.randn(1, 3, 32, 32), target_macs=0.5).model
    >>> path = save_pruned(pruned, os.path.join(tempfile.mkdtemp(), "pruned.pt"))
    >>> loaded = load_pruned(path)
    >>> bool(torch.equal(loaded.eval()(torch.ones(1, 3, 32, 32)), pruned.eval()(torch.ones(1, 3, 32, 32))))
    True
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pfgdf_plugin._util import io
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.models.architecture import (
    KINDS,
    architecture_record,
    build_unpruned,
    module_attributes,
    rebuild,
    tensors_of,
)
from pfgdf_plugin.models.meta import ModelMeta

FORMAT = "pfgdf-pruned-model"
FORMAT_VERSION = 2
"""Version 2: tensors + JSON, read with ``weights_only=True``. Version 1 (0.1.x): a pickled module."""

Architecture = nn.Module | Callable[[], nn.Module]


def _versions() -> dict[str, str]:
    import timm
    import torch_pruning as tp

    from pfgdf_plugin import __version__

    return {"pfgdf_plugin": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "torch_pruning": getattr(tp, "__version__", "?")}


def save_pruned(
    model: nn.Module, path: str | os.PathLike, *, metadata: ModelMeta | dict[str, Any] | None = None
) -> Path:
    """Save a (pruned) model atomically: ``path`` is complete or untouched.

    timm models and zoo networks are recorded by name and load with no further argument; for your own
    architecture, `load_pruned` needs the unpruned network as ``model=``.

    Args:
        model: the model to save.
        path: the file to write.
        metadata: a `ModelMeta` (or a dict of its fields) saved with the model.

    Raises:
        ValueError: ``model`` is not a module, or ``metadata`` does not fit the schema.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    meta = metadata if isinstance(metadata, ModelMeta) else ModelMeta.from_dict(dict(metadata or {}))
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": architecture_record(model),
        "modules": module_attributes(model),
        "metadata": meta.to_dict(),
        "versions": _versions(),
    }
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "header": json.dumps(header),
               "tensors": tensors_of(model)}
    return io.write_with(path, lambda fh: torch.save(payload, fh))


def load_pruned(
    path: str | os.PathLike, *, model: Architecture | None = None, trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model written by `save_pruned`, without unpickling anything (unless ``trust_pickle=True``).

    Args:
        path: the model file.
        model: the unpruned architecture (a module or a function returning one); needed only for your own
            architectures, which the file cannot name.
        trust_pickle: also load version-1 files and other pickles. Only for files you trust: unpickling runs
            whatever code the file contains.
        map_location: where tensors go.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a pfgdf-plugin model file, is damaged, needs ``trust_pickle=True``, or does
            not fit the architecture.
    """
    return load_pruned_with_metadata(path, model=model, trust_pickle=trust_pickle, map_location=map_location)[0]


def load_pruned_with_metadata(
    path: str | os.PathLike, *, model: Architecture | None = None, trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelMeta]:
    """Like `load_pruned`, also returning the `ModelMeta` saved with the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise ValueError(
                f"{str(path)!r} holds pickled Python objects (a model file of pfgdf-plugin 0.1, or a foreign "
                "pickle); loading it could run arbitrary code, so it was not loaded. If you trust this file, pass "
                "trust_pickle=True (CLI: --trust-pickle), then save it again to get a safe file."
            ) from None
        return _load_pickle(path, map_location)
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a model file written by save_pruned ({err})") from err
    header, tensors = _parse(path, payload)
    unpruned = build_unpruned(header["architecture"], model)
    meta = ModelMeta.from_dict(header["metadata"])
    with torch.no_grad():
        loaded = rebuild(unpruned, header["modules"], tensors)
    _check_runs(path, loaded, meta)
    return loaded, meta


def _bad_file(path: Path, why: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a model file written by save_pruned ({why})")


def _parse(path: Path, payload: object) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked JSON header and tensors of a version-2 payload."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _bad_file(path, f"no {FORMAT!r} header")
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad_file(path, f"format version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer pfgdf-plugin (format {version}); upgrade to load it")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in tensors.items()):
        raise _bad_file(path, "'tensors' must map names to tensors")
    try:
        header = json.loads(payload.get("header"))
    except (TypeError, ValueError) as err:
        raise _bad_file(path, f"its header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise _bad_file(path, "its header must be a JSON object")
    arch = header.get("architecture")
    if not isinstance(arch, dict) or arch.get("kind") not in KINDS or not isinstance(arch.get("name"), str) \
            or not isinstance(arch.get("kwargs"), dict):
        raise _bad_file(path, f"'architecture' must be {{'kind': one of {KINDS}, 'name': str, 'kwargs': {{}}}}")
    modules = header.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(v, dict) for v in modules.values()):
        raise _bad_file(path, "'modules' must map module names to attribute mappings")
    return header, tensors


def _check_runs(path: Path, model: nn.Module, meta: ModelMeta) -> None:
    if meta.input_size is None:
        return
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *meta.input_size))
    except Exception as err:
        raise ValueError(f"the model rebuilt from {str(path)!r} does not run at its recorded input size "
                         f"{meta.input_size}: {err}") from err


def _load_pickle(path: Path, map_location: str | torch.device) -> tuple[nn.Module, ModelMeta]:
    warnings.warn(f"unpickling {str(path)!r} because trust_pickle=True: this runs any code the file holds. "
                  "Save it again with save_pruned to get a file that loads safely.", stacklevel=3)
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _bad_file(path, f"no {FORMAT!r} header")
    model = payload.get("model")
    if not isinstance(model, nn.Module):
        raise _bad_file(path, f"its 'model' entry is a {type(model).__name__}, not a torch.nn.Module")
    return model, ModelMeta.from_dict(payload.get("metadata") or {})
