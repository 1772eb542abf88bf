"""Pipeline stage: export to ONNX and to ONNX Runtime's ORT format, INT8 quantization, each checked before it is saved.

Every function validates its arguments before writing anything, checks the result against a reference
(PyTorch, or ONNX Runtime on the source model), and writes its files atomically only when the check passed.
The ORT conversion, the mobile-usability check and the INT8 quantizer are onnxruntime's own tools; this module
wires them together and reports what they did.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode

# 18 is the opset the torch.export-based exporter emits natively (torchlib), so no version conversion pass
# runs; ONNX Runtime Mobile, its NNAPI / CoreML partitioners and the QDQ quantizer (per-channel needs >= 13)
# all support it.
DEFAULT_OPSET = 18
MIN_OPSET = 13
# max |onnx - reference| / max |reference| over the parity inputs: float32 reassociation in fused kernels
# stays near 1e-6 on the models we test; 1e-4 leaves room for deep nets while catching any real mismatch.
PARITY_TOLERANCE = 1e-4
# Share of calibration images whose INT8 top-1 class equals the float model's: the regression guard of the tests.
# Measured on random-weight resnet18 (64x64) and CifarVGG (32x32), original and 50%-MACs pruned, BatchNorm
# recalibrated, MinMax per-channel QDQ: 0.82 to 0.98 over "digits" / "mnist" calibration images, 0.97 in the
# test's own setting (docs/deployment.md). Random networks have small logit margins, so this is a floor, not a
# promise, and a proxy for quantization damage, never an accuracy.
INT8_AGREEMENT_THRESHOLD = 0.80
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
TARGET_PLATFORMS: tuple[str, ...] = ("arm", "amd64")
ACTIVATION_TYPES: tuple[str, ...] = ("uint8", "int8")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")
# Keys this package stores in an ONNX model's metadata_props (readable back through ONNX Runtime).
META_PREFIX = "pfgdf."
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ParityError(RuntimeError):
    """An exported model's outputs differ from the reference by more than the tolerance; nothing was written."""


@dataclass
class Parity:
    """How far an exported model's outputs are from a reference on the same random inputs.

    ``relative_error = max_abs_error / max_abs_output``; the export passes when it is <= ``tolerance``.
    """

    reference: str
    samples: int
    max_abs_error: float
    max_abs_output: float
    tolerance: float

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.max_abs_output, 1e-30)

    @property
    def passed(self) -> bool:
        return self.relative_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "samples": self.samples,
            "max_abs_error": self.max_abs_error,
            "max_abs_output": self.max_abs_output,
            "relative_error": self.relative_error,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"parity vs {self.reference}: max abs error {self.max_abs_error:.3g} / max abs output "
            f"{self.max_abs_output:.3g} = {self.relative_error:.3g} (tolerance {self.tolerance:g}, "
            f"{self.samples} random inputs): {verdict}"
        )


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, how it was made, its parity with PyTorch, its size and cost."""

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


@dataclass
class EpUsability:
    """onnxruntime's partitioning estimate for one mobile execution provider (NNAPI or CoreML).

    ``suitability`` is the tool's verdict: ``YES`` (one partition covering most nodes), ``MAYBE`` or ``NO``.
    """

    ep: str
    nodes: int
    supported_nodes: int
    partitions: int
    unsupported_ops: list[str]
    suitability: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class OrtExport:
    """What :func:`export_ort` wrote: the ``.ort`` file, the reduced-build operator config, checks and sizes."""

    path: Path
    config_path: Path
    source: Path
    target_platform: str
    parity: Parity
    size_bytes: int
    usability: list[EpUsability] = field(default_factory=list)
    usability_log: str = ""

    def to_dict(self) -> dict[str, Any]:
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
        """One line per execution provider: supported nodes, partitions, verdict."""
        return "\n".join(
            f"{u.ep}: {u.supported_nodes}/{u.nodes} nodes supported in {u.partitions} partition(s), "
            f"worth trying: {u.suitability}"
            + (f" (unsupported ops: {', '.join(u.unsupported_ops)})" if u.unsupported_ops else "")
            for u in self.usability
        )


@dataclass
class Int8Export:
    """What :func:`quantize_int8` wrote, with the top-1 agreement proxy and sizes.

    ``top1_agreement`` is the share of calibration images on which the INT8 and float models pick the same
    class: a proxy for quantization damage, not an accuracy (there are no labels involved).
    ``float_classes`` counts the distinct classes the float model predicts on those images: when it is 1
    (a random-weight network whose output is dominated by the classifier bias) agreement is trivially 1.
    """

    path: Path
    source: Path
    calibration: str
    images: int
    per_channel: bool
    activation_type: str
    preprocessed: bool
    top1_agreement: float | None
    float_classes: int | None
    max_abs_error: float
    max_abs_output: float
    size_bytes: int
    source_size_bytes: int

    @property
    def size_ratio(self) -> float:
        """INT8 file size / float file size."""
        return self.size_bytes / self.source_size_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "format": "QDQ",
            "calibration": self.calibration,
            "images": self.images,
            "per_channel": self.per_channel,
            "activation_type": self.activation_type,
            "weight_type": "int8",
            "preprocessed": self.preprocessed,
            "top1_agreement": self.top1_agreement,
            "float_classes": self.float_classes,
            "top1_agreement_note": "agreement of INT8 top-1 with the float model on the calibration images; "
            "a proxy for quantization damage, not an accuracy",
            "max_abs_error": self.max_abs_error,
            "max_abs_output": self.max_abs_output,
            "size_bytes": self.size_bytes,
            "source_size_bytes": self.source_size_bytes,
            "size_ratio": self.size_ratio,
        }


# --------------------------------------------------------------------------------------------- ONNX


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
    """Export ``model`` (in eval mode) to an ONNX file, verified before it is written.

    The graph is checked with ``onnx.checker`` and run by ONNX Runtime (CPU) on ``parity_samples`` random
    inputs; the file is written (atomically) only if ``max |ort - torch| / max |torch| <= tolerance``.
    MACs and parameters (``tp.utils.count_ops_and_params``) and ``metadata`` are stored in the model's
    ``metadata_props`` under ``pfgdf.*`` so that :func:`~pfgdf_plugin.measure.latency.benchmark_latency` can
    compare against them later.

    Args:
        model: the (pruned) model; its train/eval flags are restored afterwards.
        path: the ``.onnx`` file to write.
        input_size: one sample's shape without the batch dimension, e.g. ``(3, 224, 224)``.
        opset: ONNX opset (default 18, native to the torch.export-based exporter; >= 13).
        dynamic_batch: make the batch dimension symbolic (NNAPI and CoreML prefer fixed shapes, so off by default).
        exporter: ``"dynamo"`` (torch.export-based, default) or ``"torchscript"`` (the legacy exporter).
        tolerance: the largest accepted relative parity error.
        parity_samples: random inputs for the parity check.
        seed: seed of those inputs.
        metadata: extra string-convertible values stored as ``pfgdf.<key>``.

    Raises:
        ValueError: bad argument, or a model that cannot run on ``input_size`` (nothing is written).
        ParityError: ONNX Runtime disagrees with PyTorch beyond ``tolerance`` (nothing is written).

    Example:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> out = export_onnx(CifarVGG(), os.path.join(tempfile.mkdtemp(), "vgg.onnx"), (3, 32, 32))
        >>> out.parity.passed, out.opset
        (True, 18)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = _output_path("path", path, ".onnx")
    size = _input_size(input_size)
    opset = _opset(opset)
    exporter = check.one_of("exporter", exporter, EXPORTERS)
    tolerance = check.positive_float("tolerance", tolerance)
    parity_samples = check.integer("parity_samples", parity_samples, 1)
    if not isinstance(dynamic_batch, bool):
        raise ValueError(f"dynamic_batch must be True or False, got {dynamic_batch!r}")

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(parity_samples, *size, generator=generator)
    with eval_mode(model), torch.no_grad():
        try:
            raw = model(inputs)
        except Exception as err:  # the model's own message says what did not fit
            raise ValueError(
                f"input_size {tuple(size)}: the model cannot run on an input of shape "
                f"{(parity_samples, *size)}: {err}"
            ) from err
        reference = _as_arrays(raw)
        macs, params = tp.utils.count_ops_and_params(model, inputs[:1])
        proto = _export_proto(model, inputs[:2] if dynamic_batch and parity_samples > 1 else inputs[:1],
                              opset, dynamic_batch, exporter)

    # Measured values win over same-named user metadata: the benchmark relies on them.
    props = {**(metadata or {}), "macs": float(macs), "params": int(params),
             "input_size": "x".join(map(str, size)), "opset": opset, "exporter": exporter}
    _set_metadata(proto, props)
    _check_onnx(proto)
    data = proto.SerializeToString()
    session = _session(data)
    if dynamic_batch:
        outputs = _run(session, inputs.numpy())
    else:
        outputs = _concat([_run(session, inputs[i : i + 1].numpy()) for i in range(parity_samples)])
    parity = _parity("pytorch", reference, outputs, tolerance, parity_samples)
    if not parity.passed:
        own = _float32_sensitivity(model, inputs, reference)
        raise ParityError(
            f"{target}: not written: {parity}. For scale, PyTorch's own float32 result differs from float64 by "
            f"{own:.3g} (relative) on the same inputs: "
            + ("a value close to the ONNX error means the model amplifies rounding (ill-conditioned); raise "
               "tolerance if that is acceptable." if own * 10 >= parity.relative_error else
               "far below the ONNX error, so the exported graph computes something different.")
        )
    _io.write_with(target, lambda fh: fh.write(data))
    return OnnxExport(
        path=target,
        opset=opset,
        exporter=exporter,
        input_size=size,
        dynamic_batch=dynamic_batch,
        parity=parity,
        size_bytes=target.stat().st_size,
        macs=float(macs),
        params=int(params),
    )


def _float32_sensitivity(model: nn.Module, inputs: torch.Tensor, reference: list[np.ndarray]) -> float:
    """Relative gap between PyTorch's float32 outputs and a float64 copy of the model: its rounding sensitivity."""
    import copy

    double = copy.deepcopy(model).double()
    with eval_mode(double), torch.no_grad():
        exact = _as_arrays(double(inputs.double()))
    err = max(float(np.abs(e - r).max()) for e, r in zip(exact, reference, strict=True))
    return err / max(max(float(np.abs(e).max()) for e in exact), 1e-30)


def _export_proto(model: nn.Module, x: torch.Tensor, opset: int, dynamic_batch: bool, exporter: str):
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


# ---------------------------------------------------------------------------------------------- ORT


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
    """Convert an ONNX file to ORT format for ONNX Runtime Mobile with ``onnxruntime.tools``, load it back, check it.

    Writes ``<output_dir>/<stem>.ort`` and ``<stem>.required_operators.config`` (the operator list a reduced
    mobile build is compiled with, ``--include_ops_by_config``; ``..._and_types.config`` with ``type_reduction``).
    Conversion uses the "Fixed" optimization style: graph optimizations are applied once, for
    ``target_platform`` (``"arm"`` for phones and edge boards, ``"amd64"`` for x86 targets).

    The ``.ort`` file is loaded back and compared with ``reference`` (a PyTorch model, when given) or else
    with the ONNX file run by ONNX Runtime under the converter's settings, on random inputs; files are written
    only when the relative error is <= ``tolerance``. With ``check_usability`` the ONNX model also goes through
    onnxruntime's mobile-usability partitioning check for NNAPI and CoreML.

    Raises:
        FileNotFoundError: ``onnx_path`` does not exist.
        ValueError: bad argument or not an ONNX file (nothing is written).
        ParityError: the ``.ort`` model disagrees with the reference (nothing is written).

    Example:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> d = tempfile.mkdtemp()
        >>> onnx_file = export_onnx(CifarVGG(), os.path.join(d, "vgg.onnx"), (3, 32, 32)).path
        >>> ort_file = export_ort(onnx_file)
        >>> ort_file.path.name, ort_file.parity.passed
        ('vgg.ort', True)
    """
    source = _input_file("onnx_path", onnx_path, (".onnx",))
    out_dir = source.parent if output_dir is None else Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output_dir {str(out_dir)!r} exists and is not a directory")
    target_platform = check.one_of("target_platform", target_platform, TARGET_PLATFORMS)
    tolerance = check.positive_float("tolerance", tolerance)
    parity_samples = check.integer("parity_samples", parity_samples, 1)
    if reference is not None and not isinstance(reference, nn.Module):
        raise ValueError(f"reference must be a torch.nn.Module or None, got {type(reference).__name__}")
    config_name = "required_operators_and_types.config" if type_reduction else "required_operators.config"
    ort_path = out_dir / f"{source.stem}.ort"
    config_path = out_dir / f"{source.stem}.{config_name}"
    _distinct(source, [ort_path, config_path])
    proto = _load_onnx("onnx_path", source)
    shape = _fixed_input_shape(proto)

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="pfgdf-ort-") as tmp, _quiet_tools(verbose):
        # The .ort file cannot be edited afterwards, so its target platform is stamped into the source first
        # (a staged copy: the user's ONNX file stays as it is); the benchmark reads it back.
        (Path(tmp) / "src").mkdir()
        stamped = Path(tmp) / "src" / source.name
        _set_metadata(proto, {"ort_target_platform": target_platform})
        stamped.write_bytes(proto.SerializeToString())
        convert_onnx_models_to_ort(
            stamped,
            output_dir=Path(tmp),
            optimization_styles=[OptimizationStyle.Fixed],
            target_platform=target_platform,
            enable_type_reduction=type_reduction,
        )
        staged_ort = Path(tmp) / ort_path.name
        staged_config = Path(tmp) / config_path.name
        ort_bytes = staged_ort.read_bytes()
        # The converter's header names the staged file; name the one the user gets.
        config_bytes = staged_config.read_text().replace(str(staged_ort), str(ort_path)).encode()
        inputs = np.random.default_rng(seed).standard_normal((parity_samples, *shape)).astype(np.float32)
        ort_session = _session(str(staged_ort))
        got = _concat([_run(ort_session, inputs[i : i + 1]) for i in range(parity_samples)])
        if reference is not None:
            with eval_mode(reference), torch.no_grad():
                expected = _as_arrays(reference(torch.from_numpy(inputs)))
            ref_name = "pytorch"
        else:
            onnx_session = _session(str(source), **_converter_session_settings(target_platform))
            expected = _concat([_run(onnx_session, inputs[i : i + 1]) for i in range(parity_samples)])
            ref_name = f"onnxruntime on {source.name}"
        parity = _parity(ref_name, expected, got, tolerance, parity_samples)
        if not parity.passed:
            raise ParityError(f"{ort_path}: not written: {parity}")
    usability, log = [], ""
    if check_usability:
        try:
            usability, log = _mobile_usability(source)
        except Exception as err:  # an advisory report; its failure must not block a verified export
            log = f"mobile usability check failed: {err}"
    _io.write_with(ort_path, lambda fh: fh.write(ort_bytes))
    _io.write_with(config_path, lambda fh: fh.write(config_bytes))
    return OrtExport(
        path=ort_path,
        config_path=config_path,
        source=source,
        target_platform=target_platform,
        parity=parity,
        size_bytes=ort_path.stat().st_size,
        usability=usability,
        usability_log=log,
    )


def write_operator_config(ort_paths: Sequence[str | os.PathLike], path: str | os.PathLike,
                          *, type_reduction: bool = False) -> Path:
    """One required-operators config covering several ``.ort`` models (a reduced build that runs all of them).

    Uses onnxruntime's own config generator; written atomically.
    """
    from onnxruntime.tools.ort_format_model import create_config_from_models

    files = [_input_file("ort_paths", p, (".ort",)) for p in ort_paths]
    if not files:
        raise ValueError("ort_paths must name at least one .ort file")
    _distinct(files[0], [Path(path)], inputs=files)
    with tempfile.TemporaryDirectory(prefix="pfgdf-ops-") as tmp, _quiet_tools(False):
        staged = Path(tmp) / "ops.config"
        create_config_from_models(files, staged, type_reduction)
        text = staged.read_text()
    return _io.write_text(path, text)


def _converter_session_settings(target_platform: str) -> dict[str, Any]:
    # The settings convert_onnx_models_to_ort uses for the "Fixed" style, so the reference sees the same graph.
    return {
        "config": {"session.qdqisint8allowed": "1" if target_platform == "arm" else "0"},
        "disabled_optimizers": None if target_platform == "amd64" else ["NchwcTransformer"],
    }


def _mobile_usability(source: Path) -> tuple[list[EpUsability], str]:
    """onnxruntime's NNAPI / CoreML partitioning check (what ``check_onnx_model_mobile_usability`` runs)."""
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


# --------------------------------------------------------------------------------------------- INT8


def quantize_int8(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration: str | os.PathLike | torch.Tensor,
    *,
    batch_size: int = 32,
    num_batches: int = 5,
    per_channel: bool = True,
    activation_type: str = "uint8",
    calibrate_method: str = "minmax",
    calibration_label: str | None = None,
    preprocess: bool = True,
    seed: int = 0,
    verbose: bool = False,
) -> Int8Export:
    """Static INT8 quantization (QDQ, int8 weights) with onnxruntime's quantizer and real calibration images.

    ``calibration`` is a source of :func:`pfgdf_plugin.data.calibration_loader` (``"digits"``, ``"mnist"``,
    an ImageFolder directory, a ``.pt`` file) or an image tensor ``[N, C, H, W]`` (already standardised;
    ``calibration_label`` then names it in the report); ``batch_size * num_batches`` images are used, resized
    to the model's input. Activation ranges come from ``calibrate_method`` (``"minmax"``, ``"percentile"``,
    ``"entropy"``); weights are int8, activations ``"uint8"`` (default) or ``"int8"``. ONNX Runtime fuses
    uint8-activation QDQ groups into integer kernels on every CPU; int8 activations only where
    ``session.qdqisint8allowed`` is on (its ARM default, and ORT files converted for ``arm``), and on x86 they measured
    2.7x slower than uint8 on resnet18 (docs/deployment.md). The model is first pre-processed (shape inference and
    optimization, ``quant_pre_process``) when ``preprocess``.

    Reports the top-1 agreement of the INT8 and float models on the calibration images (a proxy for
    quantization damage, not an accuracy) and the file sizes. ``pfgdf.*`` metadata is carried over.

    Raises:
        FileNotFoundError: ``onnx_path`` or a calibration path does not exist.
        ValueError: bad argument, a model whose input size is not fixed, or unusable calibration data
            (all before anything is written).

    Example:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> d = tempfile.mkdtemp()
        >>> src = export_onnx(CifarVGG(), os.path.join(d, "vgg.onnx"), (3, 32, 32)).path
        >>> q = quantize_int8(src, os.path.join(d, "vgg.int8.onnx"), "digits", num_batches=1)
        >>> q.size_ratio < 0.5
        True
    """
    source = _input_file("onnx_path", onnx_path, (".onnx",))
    target = _output_path("output_path", output_path, ".onnx")
    _distinct(source, [target])
    activation_type = check.one_of("activation_type", activation_type, ACTIVATION_TYPES)
    calibrate_method = check.one_of("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    batch_size = check.integer("batch_size", batch_size, 1)
    num_batches = check.integer("num_batches", num_batches, 1)
    proto = _load_onnx("onnx_path", source)
    shape = _fixed_input_shape(proto)
    images, description = _calibration_images(calibration, shape, batch_size, num_batches, seed)
    description = calibration_label or description

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batched = _batch_is_dynamic(proto)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            step = batch_size if batched else 1
            self._batches = iter([images[i : i + step] for i in range(0, len(images), step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {proto.graph.input[0].name: batch}

    import onnx

    with tempfile.TemporaryDirectory(prefix="pfgdf-int8-") as tmp, _quiet_tools(verbose):
        model_in, preprocessed = source, False
        if preprocess:
            try:
                quant_pre_process(str(source), str(Path(tmp) / "pre.onnx"))
                model_in, preprocessed = Path(tmp) / "pre.onnx", True
            except Exception as err:  # symbolic shape inference does not know every op; quantize without it
                print(f"quantize_int8: pre-processing skipped ({err})", file=sys.stderr)
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(model_in), str(staged), _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[calibrate_method],
        )
        quantized = onnx.load(str(staged))
    meta = {p.key: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    _set_metadata(quantized, {k[len(META_PREFIX):]: v for k, v in meta.items()}
                  | {"variant": "int8", "quantization": f"QDQ int8 weights, {activation_type} activations, "
                     f"{'per-channel' if per_channel else 'per-tensor'}, MinMax calibration on {description}"})
    _check_onnx(quantized)
    data = quantized.SerializeToString()

    float_out = _run_all(_session(str(source)), images, batched)
    int8_out = _run_all(_session(data), images, batched)
    agreement, classes = None, None
    if float_out.ndim == 2 and float_out.shape[1] > 1:
        agreement = float((float_out.argmax(1) == int8_out.argmax(1)).mean())
        classes = len(np.unique(float_out.argmax(1)))
    _io.write_with(target, lambda fh: fh.write(data))
    return Int8Export(
        path=target,
        source=source,
        calibration=description,
        images=len(images),
        per_channel=per_channel,
        activation_type=activation_type,
        preprocessed=preprocessed,
        top1_agreement=agreement,
        float_classes=classes,
        max_abs_error=float(np.abs(float_out - int8_out).max()),
        max_abs_output=float(np.abs(float_out).max()),
        size_bytes=target.stat().st_size,
        source_size_bytes=source.stat().st_size,
    )


def _calibration_images(
    calibration: object, shape: tuple[int, ...], batch_size: int, num_batches: int, seed: int
) -> tuple[np.ndarray, str]:
    from pfgdf_plugin.data import calibration_loader, fit_images

    if isinstance(calibration, torch.Tensor):
        if calibration.ndim != 4:
            raise ValueError(f"calibration tensor must be [N, C, H, W], got shape {tuple(calibration.shape)}")
        images = fit_images(calibration.float(), shape, scaled=False)[: batch_size * num_batches]
        description = f"a tensor of {len(images)} images"
    elif isinstance(calibration, (str, os.PathLike)):
        if len(shape) != 3:
            raise ValueError(f"calibration images need a model input of [N, C, H, W], got [N, {shape}]")
        loader = calibration_loader(calibration, shape, batch_size=batch_size, num_batches=num_batches, seed=seed)
        images = torch.cat([batch[0] for batch in loader])
        description = f"{len(images)} images of {str(calibration)!r}"
    else:
        raise ValueError(
            "calibration must be 'digits', 'mnist', an ImageFolder directory, a .pt file or an image tensor, "
            f"got {type(calibration).__name__}"
        )
    if len(images) == 0:
        raise ValueError("calibration: no images")
    return images.numpy().astype(np.float32), description


# ------------------------------------------------------------------------------------------ helpers


def read_model_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``pfgdf.*`` values stored in an ``.onnx`` or ``.ort`` file, without the prefix."""
    session = _session(str(_input_file("path", path, (".onnx", ".ort"))))
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}


def _session(model: str | bytes, config: Mapping[str, str] | None = None,
             disabled_optimizers: list[str] | None = None, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=disabled_optimizers)
    except Exception as err:
        where = model if isinstance(model, str) else "the exported model"
        raise ValueError(f"ONNX Runtime cannot load {where}: {err}") from err


def _run(session, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x})


def _run_all(session, images: np.ndarray, batched: bool) -> np.ndarray:
    step = 64 if batched else 1
    return np.concatenate([_run(session, images[i : i + step])[0] for i in range(0, len(images), step)])


def _concat(runs: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate(parts) for parts in zip(*runs, strict=True)]


def _as_arrays(out: object) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().numpy()]
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return [t.detach().numpy() for t in out]
    raise ValueError(f"model output must be a tensor or a tuple of tensors to export, got {type(out).__name__}")


def _parity(reference: str, expected: list[np.ndarray], got: list[np.ndarray], tolerance: float,
            samples: int) -> Parity:
    if len(expected) != len(got) or any(e.shape != g.shape for e, g in zip(expected, got, strict=False)):
        shapes = ([e.shape for e in expected], [g.shape for g in got])
        raise ParityError(f"output shapes differ from the reference: {shapes[1]} vs {shapes[0]}")
    err = max(float(np.abs(e.astype(np.float64) - g).max()) for e, g in zip(expected, got, strict=True))
    scale = max(float(np.abs(e).max()) for e in expected)
    return Parity(reference, samples, err, scale, tolerance)


def _set_metadata(proto, values: Mapping[str, Any]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in values.items():
        name = f"{META_PREFIX}{key}"
        text = value if isinstance(value, str) else json.dumps(value)
        if name in existing:
            existing[name].value = text
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = name, text


def _check_onnx(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ValueError(f"the exported graph fails onnx.checker: {err}") from err


def _load_onnx(name: str, path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:
        raise ValueError(f"{name}: {str(path)!r} is not an ONNX model ({err})") from err


def _fixed_input_shape(proto) -> tuple[int, ...]:
    """One sample's input shape; every dimension but the batch must be fixed."""
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


def _batch_is_dynamic(proto) -> bool:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return not dim.HasField("dim_value")


def _input_size(input_size: object) -> tuple[int, ...]:
    if (
        not isinstance(input_size, (tuple, list, torch.Size))
        or not input_size
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_size)
    ):
        raise ValueError(
            f"input_size must be one sample's shape without the batch, positive integers such as (3, 224, 224); "
            f"got {input_size!r}"
        )
    return tuple(int(v) for v in input_size)


def _opset(opset: object) -> int:
    import onnx

    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise ValueError(f"opset must be an integer in [{MIN_OPSET}, {top}], got {opset!r}")
    return opset


def _output_path(name: str, path: object, suffix: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name} must be a file path ending in {suffix}, got {path!r}")
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise ValueError(f"{name} must end in {suffix}, got {str(target)!r}")
    if target.is_dir():
        raise ValueError(f"{name} {str(target)!r} is a directory; give a file path ending in {suffix}")
    return target


def _input_file(name: str, path: object, suffixes: tuple[str, ...]) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name} must be a path to a {' or '.join(suffixes)} file, got {path!r}")
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{name}: no file at {str(source)!r}")
    if source.suffix.lower() not in suffixes:
        raise ValueError(f"{name} must be a {' or '.join(suffixes)} file, got {str(source)!r}")
    return source


def _distinct(source: Path, outputs: Sequence[Path], inputs: Sequence[Path] | None = None) -> None:
    ins = {p.resolve() for p in (inputs or [source])}
    for out in outputs:
        if out.resolve() in ins:
            raise ValueError(f"output {str(out)!r} would overwrite an input; choose another path")


@contextlib.contextmanager
def _quiet_tools(verbose: bool) -> Iterator[None]:
    """onnxruntime's tools print progress on stdout and log at INFO; keep stdout for our tables."""
    names = ("ort_format_model.utils", "onnxruntime.quantization", "root")
    loggers = [logging.getLogger(n if n != "root" else None) for n in names]
    levels = [lg.level for lg in loggers]
    sink = sys.stderr if verbose else open(os.devnull, "w")
    try:
        if not verbose:
            for lg in loggers:
                lg.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(sink), warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if sink is not sys.stderr:
            sink.close()
