"""The models under test: name the given files, open them on ONNX Runtime, read the input shape and the
``pfgdf.*`` metadata `pfgdf_plugin.deploy.onnx.export_onnx` stores, count MACs of PyTorch modules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.deploy.onnx import META_PREFIX
from pfgdf_plugin.deploy.session import create_session
from pfgdf_plugin.measure.result import Variant

if TYPE_CHECKING:
    import onnxruntime


def named_files(models: object, baseline: object) -> dict[str, tuple[Path, bool]]:
    """``name -> (path, is_baseline)``, the baseline first; refuses missing files and clashing names."""
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    if isinstance(models, Mapping):
        pairs = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, Sequence):
        pairs = [(None, p) for p in models]
    else:
        raise ValueError(f"models must be a list of .onnx/.ort paths or a mapping name -> path, got {models!r}")
    if baseline is not None:
        pairs.insert(0, (None, baseline))
    files: dict[str, tuple[Path, bool]] = {}
    for i, (name, p) in enumerate(pairs):
        is_base = baseline is not None and i == 0
        path = check.input_file("baseline" if is_base else "models", p, (".onnx", ".ort"))
        # model.onnx -> "model", model.ort -> "model.ort": the ORT file of a model stays apart from its source.
        key = name or (path.stem if path.suffix.lower() == ".onnx" else path.name)
        if key in files:
            if files[key][0].resolve() == path.resolve():
                raise ValueError(f"{str(path)!r} is given twice (as the baseline and as a model?)")
            raise ValueError(f"two models are named {key!r} ({str(files[key][0])!r} and {str(path)!r}); rename "
                             "one, or pass a mapping name -> path")
        files[key] = (path, is_base)
    return files


def load_variants(files: dict[str, tuple[Path, bool]], size: tuple[int, ...] | None
                  ) -> tuple[list[Variant], tuple[int, ...] | None]:
    """One `Variant` per file, and the per-sample input shape they all take (checked to agree)."""
    variants, shape, shape_from = [], size, "input_size"
    for name, (path, _) in files.items():
        session = cpu_session(path, 1, False)
        inp = session.get_inputs()
        if len(inp) != 1:
            raise ValueError(f"{str(path)!r}: expected a model with one input, found {len(inp)}")
        dims = inp[0].shape[1:]
        fixed = all(isinstance(d, int) and d > 0 for d in dims)
        if shape is None:
            if not fixed:
                raise ValueError(f"{str(path)!r} has a symbolic input size {inp[0].shape}; pass input_size")
            shape, shape_from = tuple(dims), str(path)
        elif len(dims) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape,
                                                                                          strict=False)):
            raise ValueError(
                f"input size mismatch: {str(path)!r} takes {[inp[0].shape[0], *dims]} but {shape_from} gives "
                f"{list(shape)} per sample; all variants must run on the same input"
            )
        batch = inp[0].shape[0]
        if isinstance(batch, int) and batch != 1:
            raise ValueError(f"{str(path)!r} has a fixed batch of {batch}; the benchmark times batch 1")
        variants.append(_onnx_variant(name, path, session.get_modelmeta().custom_metadata_map))
    return variants, shape


def _onnx_variant(name: str, path: Path, meta: Mapping[str, str]) -> Variant:
    """A file's `Variant`, with MACs, parameters and kind from the ``pfgdf.*`` metadata `export_onnx` wrote."""
    macs = meta.get(f"{META_PREFIX}macs")
    params = meta.get(f"{META_PREFIX}params")
    return Variant(
        name=name, runtime="onnxruntime", path=path,
        macs=float(macs) if macs else None, params=int(float(params)) if params else None,
        size_bytes=path.stat().st_size, kind=meta.get(f"{META_PREFIX}variant"),
        ort_target_platform=meta.get(f"{META_PREFIX}ort_target_platform") if path.suffix == ".ort" else None,
        latency_target=_latency_target(meta.get(f"{META_PREFIX}latency_target")),
    )


def _latency_target(text: str | None) -> dict | None:
    """The recorded latency target (JSON with a numeric ``target_speedup`` and ``threads``), else ``None``."""
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    ok = isinstance(value, dict) and all(isinstance(value.get(k), int | float) for k in ("target_speedup", "threads"))
    return value if ok else None


def torch_variant(name: str, module: nn.Module, x: torch.Tensor) -> Variant:
    """A module's `Variant`, its MACs and parameters counted by Torch-Pruning on ``x``."""
    with eval_mode(module), torch.no_grad():
        try:
            macs, params = tp.utils.count_ops_and_params(module, x)
        except Exception as err:
            raise ValueError(f"torch_models[{name!r}] cannot run on an input of shape {tuple(x.shape)}: {err}"
                             ) from err
    return Variant(name=name, runtime="pytorch", path=None, macs=float(macs), params=int(params),
                   size_bytes=None, kind=None)


# TODO(refactor): replace with the one session factory of `pfgdf_plugin.deploy.session` once it exists.
def cpu_session(path: Path, threads: int, spinning: bool) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session as the benchmark protocol wants it: sequential, ``threads`` intra-op threads,
    one inter-op thread, spinning on or off."""
    return create_session(path, threads=threads, inter_op_threads=1, spinning=spinning)
