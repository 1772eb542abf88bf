"""Save and load pruned models: their shapes differ from the architecture's, so whole modules are saved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pfgdf_plugin._util import io as _io

FORMAT = "pfgdf-pruned-model"
FORMAT_VERSION = 1


def save_pruned(model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Save a (pruned) model as a whole module, atomically: ``path`` is complete or untouched.

    Loading needs the model's classes to be importable (timm's are), like any pickled module.

    Example:
        >>> import tempfile, os, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> path = save_pruned(net, os.path.join(tempfile.mkdtemp(), "net.pt"))
        >>> load_pruned(path)[0].out_features
        3
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "metadata": dict(metadata or {}),
        "model": model,
    }
    return _io.write_with(path, lambda fh: torch.save(payload, fh))


def load_pruned(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_pruned`.

    This unpickles the file (``weights_only=False``): load only files you trust.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a pfgdf-plugin model file.
    """
    return load_pruned_with_metadata(path, map_location=map_location)[0]


def load_pruned_with_metadata(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Like :func:`load_pruned`, also returning the metadata saved with the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {str(path)!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a model file written by save_pruned ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a model file written by save_pruned (no {FORMAT!r} header)")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer pfgdf-plugin (format {payload['version']}); "
            "upgrade pfgdf-plugin to load it"
        )
    return payload["model"], payload.get("metadata", {})
