"""Export a PyTorch model to ONNX, checked against PyTorch before it is written; ONNX graph and metadata helpers.

The file is checked with `onnx.checker` and run by ONNX Runtime on random inputs; it is written (atomically) only
when its outputs match PyTorch's within the tolerance. Measured MACs and parameters are stored in the model's
`metadata_props` under `pfgdf.*` (`META_PREFIX`), where the latency benchmark reads them back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.deploy.parity import (
    PARITY_TOLERANCE,
    Parity,
    ParityError,
    as_arrays,
    compare_outputs,
    float32_sensitivity,
)
from pfgdf_plugin.deploy.session import create_session, outputs, outputs_per_sample

# 18 is the opset the torch.export-based exporter emits natively (torchlib), so no version conversion pass
# runs; ONNX Runtime Mobile, its NNAPI / CoreML partitioners and the QDQ quantizer (per-channel needs >= 13)
# all support it.
DEFAULT_OPSET = 18
MIN_OPSET = 13
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
# Keys this package stores in an ONNX model's metadata_props (readable back through ONNX Runtime).
META_PREFIX = "pfgdf."
INPUT_NAME, OUTPUT_NAME = "input", "output"


@dataclass
class OnnxExport:
    """What `export_onnx` wrote: the file, how it was made, its parity with PyTorch, its size and cost."""

    path: Path
    opset: int
    exporter: str
    input_size: tuple[int, ...]
    dynamic_batch: bool
    parity: Parity
    size_bytes: int
    macs: float
    params: int

    def to_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return {
            "path": str(self.path),
            "opset": self.opset,
            "exporter": self.exporter,
            "input_size": list(self.input_size),
            "dynamic_batch": self.dynamic_batch,
            "parity": self.parity.to_dict(),
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "params": self.params,
        }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    exporter: str = "dynamo",
    tolerance: float = PARITY_TOLERANCE,
    parity_samples: int = 4,
    seed: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> OnnxExport:
    """Export `model` (in eval mode) to an ONNX file, verified before it is written.

    The graph is checked with `onnx.checker` and run by ONNX Runtime (CPU) on `parity_samples` random
    inputs; the file is written (atomically) only if `max |ort - torch| / max |torch| <= tolerance`.
    MACs and parameters (`tp.utils.count_ops_and_params`) and `metadata` are stored in the model's
    `metadata_props` under `pfgdf.*` so that `pfgdf_plugin.measure.latency.benchmark_latency` can
    compare against them later.

    Args:
        model: the (pruned) model; its train/eval flags are restored afterwards.
        path: the `.onnx` file to write.
        input_size: one sample's shape without the batch dimension, e.g. `(3, 224, 224)`.
        opset: ONNX opset (default 18, native to the torch.export-based exporter; >= 13).
        dynamic_batch: make the batch dimension symbolic (NNAPI and CoreML prefer fixed shapes, so off by default).
        exporter: `"dynamo"` (torch.export-based, default) or `"torchscript"` (the legacy exporter).
        tolerance: the largest accepted relative parity error.
        parity_samples: random inputs for the parity check.
        seed: seed of those inputs.
        metadata: extra string-convertible values stored as `pfgdf.<key>`.

    Returns:
        What was written, with its parity, size, MACs and parameters.

    Raises:
        ValueError: bad argument, or a model that cannot run on `input_size` (nothing is written).
        ParityError: ONNX Runtime disagrees with PyTorch beyond `tolerance` (nothing is written).

    Examples:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> out = export_onnx(CifarVGG(), os.path.join(tempfile.mkdtemp(), "vgg.onnx"), (3, 32, 32))
        >>> out.parity.passed, out.opset
        (True, 18)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = check.output_file("path", path, ".onnx")
    size = check.shape("input_size", input_size)
    opset = check.integer("opset", opset, MIN_OPSET, _max_opset())
    exporter = check.one_of("exporter", exporter, EXPORTERS)
    tolerance = check.positive_float("tolerance", tolerance)
    parity_samples = check.integer("parity_samples", parity_samples, 1)
    dynamic_batch = check.boolean("dynamic_batch", dynamic_batch)

    inputs = torch.randn(parity_samples, *size, generator=torch.Generator().manual_seed(seed))
    with eval_mode(model), torch.no_grad():
        reference = _reference_outputs(model, inputs)
        macs, params = tp.utils.count_ops_and_params(model, inputs[:1])
        proto = _export_proto(model, inputs[:2] if dynamic_batch and parity_samples > 1 else inputs[:1],
                              opset, dynamic_batch, exporter)
    # Measured values win over same-named user metadata: the benchmark relies on them.
    set_metadata(proto, {**(metadata or {}), "macs": float(macs), "params": int(params),
                         "input_size": "x".join(map(str, size)), "opset": opset, "exporter": exporter})
    check_graph(proto)
    data = proto.SerializeToString()
    session = create_session(data)
    got = outputs(session, inputs.numpy()) if dynamic_batch else outputs_per_sample(session, inputs.numpy())
    parity = compare_outputs("pytorch", reference, got, tolerance, parity_samples)
    if not parity.passed:
        raise _parity_failure(target, parity, float32_sensitivity(model, inputs, reference))
    _io.write_with(target, lambda fh: fh.write(data))
    return OnnxExport(path=target, opset=opset, exporter=exporter, input_size=size, dynamic_batch=dynamic_batch,
                      parity=parity, size_bytes=target.stat().st_size, macs=float(macs), params=int(params))


def _reference_outputs(model: nn.Module, inputs: torch.Tensor) -> list[np.ndarray]:
    try:
        raw = model(inputs)
    except Exception as err:  # the model's own message says what did not fit
        raise ValueError(
            f"input_size {tuple(inputs.shape[1:])}: the model cannot run on an input of shape "
            f"{tuple(inputs.shape)}: {err}"
        ) from err
    return as_arrays(raw)


def _parity_failure(target: Path, parity: Parity, own: float) -> ParityError:
    return ParityError(
        f"{target}: not written: {parity}. For scale, PyTorch's own float32 result differs from float64 by "
        f"{own:.3g} (relative) on the same inputs: "
        + ("a value close to the ONNX error means the model amplifies rounding (ill-conditioned); raise "
           "tolerance if that is acceptable." if own * 10 >= parity.relative_error else
           "far below the ONNX error, so the exported graph computes something different.")
    )


def onnx_bytes(model: nn.Module, example_input: torch.Tensor, *, exporter: str = "dynamo",
               opset: int = DEFAULT_OPSET) -> bytes:
    """``model`` exported at ``example_input``'s shape as a serialized ONNX model, in memory, unchecked: for timing
    (the latency search), where `export_onnx`'s parity check and file would be wasted.

    Examples:
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> len(onnx_bytes(CifarVGG((8, "M")), torch.randn(1, 3, 8, 8))) > 0
        True
    """
    with eval_mode(model), torch.no_grad():
        return _export_proto(model, example_input, opset, False, exporter).SerializeToString()


def _export_proto(model: nn.Module, x: torch.Tensor, opset: int, dynamic_batch: bool, exporter: str) -> Any:
    import onnx

    # The exporters announce their steps on stdout, which belongs to our tables.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            program = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=opset, external_data=False, dynamic_shapes=dynamic,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
            return program.model_proto
        buffer = io.BytesIO()
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(
            model, (x,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes=axes,
        )
        return onnx.load_from_string(buffer.getvalue())


def _max_opset() -> int:
    import onnx

    return onnx.defs.onnx_opset_version()


# ------------------------------------------------------------------------------- graph and metadata helpers


def read_model_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `pfgdf.*` values stored in an `.onnx` or `.ort` file, without the prefix.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an `.onnx` / `.ort` file, or one ONNX Runtime cannot load.
    """
    session = create_session(check.input_file("path", path, (".onnx", ".ort")))
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}


def prefixed_metadata(proto: Any) -> dict[str, str]:
    """The `pfgdf.*` entries of an `onnx.ModelProto`, without the prefix."""
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def set_metadata(proto: Any, values: Mapping[str, Any]) -> None:
    """Store `values` in `proto.metadata_props` as `pfgdf.<key>` (strings as they are, the rest as JSON)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        name = f"{META_PREFIX}{key}"
        text = value if isinstance(value, str) else json.dumps(value)
        if name in existing:
            existing[name].value = text
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = name, text


def check_graph(proto: Any) -> None:
    """Run `onnx.checker` on `proto`.

    Raises:
        ValueError: the graph is invalid.
    """
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"the exported graph fails onnx.checker: {err}") from err


def load_graph(name: str, path: Path) -> Any:
    """The `onnx.ModelProto` in `path` (the argument `name` is quoted in errors).

    Raises:
        ValueError: the file is not an ONNX model.
    """
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:
        raise ValueError(f"{name}: {str(path)!r} is not an ONNX model ({err})") from err


def fixed_input_shape(proto: Any) -> tuple[int, ...]:
    """One sample's input shape; every dimension but the batch must be fixed.

    Raises:
        ValueError: the model has several inputs, or a symbolic dimension after the batch.
    """
    if len(proto.graph.input) != 1:
        raise ValueError(f"expected a model with one input, found {len(proto.graph.input)}")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    sample = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
    if not dims or any(d is None or d < 1 for d in sample):
        raise ValueError(
            f"the model's input {proto.graph.input[0].name!r} has no fixed size after the batch dimension "
            f"({[d.dim_param or d.dim_value for d in dims]}); export it with a fixed input_size"
        )
    return tuple(int(d) for d in sample)  # type: ignore[arg-type]


def batch_is_dynamic(proto: Any) -> bool:
    """Whether the model's first input has a symbolic batch dimension."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return not dim.HasField("dim_value")
