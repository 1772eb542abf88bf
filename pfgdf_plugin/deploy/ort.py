"""Convert an ONNX file to ONNX Runtime's ORT format for ONNX Runtime Mobile, checked before it is written.

The conversion, the reduced-build operator config and the NNAPI / CoreML usability check are onnxruntime's own
tools (`onnxruntime.tools`); this module wires them together and reports what they did.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.deploy.onnx import fixed_input_shape, load_graph, set_metadata
from pfgdf_plugin.deploy.parity import PARITY_TOLERANCE, Parity, ParityError, as_arrays, compare_outputs
from pfgdf_plugin.deploy.quiet import quiet_tools
from pfgdf_plugin.deploy.report import usability_summary
from pfgdf_plugin.deploy.session import create_session, outputs_per_sample

TARGET_PLATFORMS: tuple[str, ...] = ("arm", "amd64")


@dataclass
class EpUsability:
    """onnxruntime's partitioning estimate for one mobile execution provider (NNAPI or CoreML).

    `suitability` is the tool's verdict: `YES` (one partition covering most nodes), `MAYBE` or `NO`.
    """

    ep: str
    nodes: int
    supported_nodes: int
    partitions: int
    unsupported_ops: list[str]
    suitability: str

    def to_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return dict(self.__dict__)


@dataclass
class OrtExport:
    """What `export_ort` wrote: the `.ort` file, the reduced-build operator config, checks and sizes."""

    path: Path
    config_path: Path
    source: Path
    target_platform: str
    parity: Parity
    size_bytes: int
    usability: list[EpUsability] = field(default_factory=list)
    usability_log: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields, JSON-ready."""
        return {
            "path": str(self.path),
            "config_path": str(self.config_path),
            "source": str(self.source),
            "target_platform": self.target_platform,
            "parity": self.parity.to_dict(),
            "size_bytes": self.size_bytes,
            "usability": [u.to_dict() for u in self.usability],
            "usability_log": self.usability_log,
        }

    def usability_summary(self) -> str:
        """One line per execution provider (`pfgdf_plugin.deploy.report.usability_summary`)."""
        return usability_summary(self.usability)


def export_ort(
    onnx_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    target_platform: str = "arm",
    reference: nn.Module | None = None,
    type_reduction: bool = False,
    check_usability: bool = True,
    tolerance: float = PARITY_TOLERANCE,
    parity_samples: int = 4,
    seed: int = 0,
    verbose: bool = False,
) -> OrtExport:
    """Convert an ONNX file to ORT format for ONNX Runtime Mobile with `onnxruntime.tools`, load it back, check it.

    Writes `<output_dir>/<stem>.ort` and `<stem>.required_operators.config` (the operator list a reduced
    mobile build is compiled with, `--include_ops_by_config`; `..._and_types.config` with `type_reduction`).
    Conversion uses the "Fixed" optimization style: graph optimizations are applied once, for
    `target_platform` (`"arm"` for phones and edge boards, `"amd64"` for x86 targets).

    The `.ort` file is loaded back and compared with `reference` (a PyTorch model, when given) or else
    with the ONNX file run by ONNX Runtime under the converter's settings, on random inputs; files are written
    only when the relative error is <= `tolerance`. With `check_usability` the ONNX model also goes through
    onnxruntime's mobile-usability partitioning check for NNAPI and CoreML.

    Returns:
        What was written, with its parity, size and the usability estimates.

    Raises:
        FileNotFoundError: `onnx_path` does not exist.
        ValueError: bad argument or not an ONNX file (nothing is written).
        ParityError: the `.ort` model disagrees with the reference (nothing is written).

    Examples:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> from pfgdf_plugin.deploy.onnx import export_onnx
        >>> d = tempfile.mkdtemp()
        >>> onnx_file = export_onnx(CifarVGG(), os.path.join(d, "vgg.onnx"), (3, 32, 32)).path
        >>> ort_file = export_ort(onnx_file)
        >>> ort_file.path.name, ort_file.parity.passed
        ('vgg.ort', True)
    """
    source = check.input_file("onnx_path", onnx_path, (".onnx",))
    out_dir = source.parent if output_dir is None else Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output_dir {str(out_dir)!r} exists and is not a directory")
    target_platform = check.one_of("target_platform", target_platform, TARGET_PLATFORMS)
    tolerance = check.positive_float("tolerance", tolerance)
    parity_samples = check.integer("parity_samples", parity_samples, 1)
    if reference is not None and not isinstance(reference, nn.Module):
        raise ValueError(f"reference must be a torch.nn.Module or None, got {type(reference).__name__}")
    ort_path = out_dir / f"{source.stem}.ort"
    config_path = out_dir / f"{source.stem}.{_config_name(type_reduction)}"
    check.distinct([source], [ort_path, config_path])
    proto = load_graph("onnx_path", source)
    inputs = np.random.default_rng(seed).standard_normal((parity_samples, *fixed_input_shape(proto)))
    inputs = inputs.astype(np.float32)

    with tempfile.TemporaryDirectory(prefix="pfgdf-ort-") as tmp, quiet_tools(verbose):
        staged_ort, staged_config = _convert(proto, source, Path(tmp), target_platform, type_reduction)
        ort_bytes = staged_ort.read_bytes()
        # The converter's header names the staged file; name the one the user gets.
        config_bytes = staged_config.read_text().replace(str(staged_ort), str(ort_path)).encode()
        got = outputs_per_sample(create_session(staged_ort), inputs)
        ref_name, expected = _expected_outputs(source, reference, inputs, target_platform)
        parity = compare_outputs(ref_name, expected, got, tolerance, parity_samples)
        if not parity.passed:
            raise ParityError(f"{ort_path}: not written: {parity}")
    usability, log = _advisory_usability(source) if check_usability else ([], "")
    _io.write_with(ort_path, lambda fh: fh.write(ort_bytes))
    _io.write_with(config_path, lambda fh: fh.write(config_bytes))
    return OrtExport(path=ort_path, config_path=config_path, source=source, target_platform=target_platform,
                     parity=parity, size_bytes=ort_path.stat().st_size, usability=usability, usability_log=log)


def write_operator_config(ort_paths: Sequence[str | os.PathLike], path: str | os.PathLike,
                          *, type_reduction: bool = False) -> Path:
    """One required-operators config covering several `.ort` models (a reduced build that runs all of them).

    Uses onnxruntime's own config generator; written atomically.

    Returns:
        `path`.

    Raises:
        FileNotFoundError: an `.ort` file does not exist.
        ValueError: no `.ort` file given, or `path` is one of them.
    """
    from onnxruntime.tools.ort_format_model import create_config_from_models

    files = [check.input_file("ort_paths", p, (".ort",)) for p in ort_paths]
    if not files:
        raise ValueError("ort_paths must name at least one .ort file")
    check.distinct(files, [Path(path)])
    with tempfile.TemporaryDirectory(prefix="pfgdf-ops-") as tmp, quiet_tools(False):
        staged = Path(tmp) / "ops.config"
        create_config_from_models(files, staged, type_reduction)
        text = staged.read_text()
    return _io.write_text(path, text)


def _config_name(type_reduction: bool) -> str:
    return "required_operators_and_types.config" if type_reduction else "required_operators.config"


def _convert(proto: Any, source: Path, tmp: Path, target_platform: str, type_reduction: bool) -> tuple[Path, Path]:
    """Run onnxruntime's converter on a stamped copy of `source` in `tmp`; the staged `.ort` and config files."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    # The .ort file cannot be edited afterwards, so its target platform is stamped into the source first
    # (a staged copy: the user's ONNX file stays as it is); the benchmark reads it back.
    (tmp / "src").mkdir()
    stamped = tmp / "src" / source.name
    set_metadata(proto, {"ort_target_platform": target_platform})
    stamped.write_bytes(proto.SerializeToString())
    convert_onnx_models_to_ort(
        stamped,
        output_dir=tmp,
        optimization_styles=[OptimizationStyle.Fixed],
        target_platform=target_platform,
        enable_type_reduction=type_reduction,
    )
    return tmp / f"{source.stem}.ort", tmp / f"{source.stem}.{_config_name(type_reduction)}"


def _expected_outputs(source: Path, reference: nn.Module | None, inputs: np.ndarray,
                      target_platform: str) -> tuple[str, list[np.ndarray]]:
    """The reference's name and outputs: PyTorch when given, else ONNX Runtime on the ONNX file."""
    if reference is not None:
        with eval_mode(reference), torch.no_grad():
            return "pytorch", as_arrays(reference(torch.from_numpy(inputs)))
    # The settings convert_onnx_models_to_ort uses for the "Fixed" style, so the reference sees the same graph.
    session = create_session(
        source,
        config={"session.qdqisint8allowed": "1" if target_platform == "arm" else "0"},
        disabled_optimizers=None if target_platform == "amd64" else ["NchwcTransformer"],
    )
    return f"onnxruntime on {source.name}", outputs_per_sample(session, inputs)


def _advisory_usability(source: Path) -> tuple[list[EpUsability], str]:
    try:
        return mobile_usability(source)
    except Exception as err:  # an advisory report; its failure must not block a verified export
        return [], f"mobile usability check failed: {err}"


def mobile_usability(source: Path) -> tuple[list[EpUsability], str]:
    """onnxruntime's NNAPI / CoreML partitioning check (what `check_onnx_model_mobile_usability` runs).

    Returns:
        One estimate per execution provider, and the tool's log.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    stream = io.StringIO()
    logger = logging.getLogger("pfgdf_plugin.mobile_usability")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    checks = (
        ("NNAPI", uc.check_nnapi_partitions),
        ("CoreML NeuralNetwork",
         lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md")),
        ("CoreML MLProgram",
         lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md")),
    )
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="pfgdf-usability-") as tmp:
            # The tool analyses the model after basic optimizations, as the ORT converter would apply them.
            optimized = Path(tmp) / source.name
            optimize_model(source, optimized)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
            for ep, fn in checks:
                info = fn(model, True)
                info.print_analysis(logger, ep)
                results.append(EpUsability(
                    ep=ep,
                    nodes=int(info.num_nodes),
                    supported_nodes=int(info.num_supported_nodes),
                    partitions=int(info.num_partitions),
                    unsupported_ops=sorted(info.unsupported_ops),
                    suitability=info.suitability().name,
                ))
    finally:
        logger.removeHandler(handler)
    return results, stream.getvalue()
