"""Static INT8 quantization (QDQ) of an ONNX file with onnxruntime's quantizer, calibrated on real images."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin.deploy.onnx import (
    batch_is_dynamic,
    check_graph,
    fixed_input_shape,
    load_graph,
    prefixed_metadata,
    set_metadata,
)
from pfgdf_plugin.deploy.quiet import quiet_tools
from pfgdf_plugin.deploy.session import create_session, first_output
from pfgdf_plugin.measure.platform import int8_kernels

# Share of calibration images whose INT8 top-1 class equals the float model's: the regression guard of the tests.
# Measured on random-weight resnet18 (64x64) and CifarVGG (32x32), original and 50%-MACs pruned, BatchNorm
# recalibrated, MinMax per-channel QDQ: 0.82 to 0.98 over "digits" / "mnist" calibration images, 0.97 in the
# test's own setting (docs/deployment.md). Random networks have small logit margins, so this is a floor, not a
# promise, and a proxy for quantization damage, never an accuracy.
INT8_AGREEMENT_THRESHOLD = 0.80
ACTIVATION_TYPES: tuple[str, ...] = ("uint8", "int8")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")


@dataclass
class Int8Export:
    """What `quantize_int8` wrote, with the top-1 agreement proxy and sizes.

    `top1_agreement` is the share of calibration images on which the INT8 and float models pick the same
    class: a proxy for quantization damage, not an accuracy (there are no labels involved).
    `float_classes` counts the distinct classes the float model predicts on those images: when it is 1
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
    reduce_range: bool = False
    kernels: str = "other"

    @property
    def size_ratio(self) -> float:
        """INT8 file size / float file size."""
        return self.size_bytes / self.source_size_bytes

    def to_dict(self) -> dict[str, Any]:
        """The fields, the format and the derived `size_ratio`, JSON-ready."""
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
            "reduce_range": self.reduce_range,
            "cpu_int8_kernels": self.kernels,
        }


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
    reduce_range: bool | str = "auto",
    seed: int = 0,
    verbose: bool = False,
) -> Int8Export:
    """Static INT8 quantization (QDQ, int8 weights) with onnxruntime's quantizer and real calibration images.

    `calibration` is a source of `pfgdf_plugin.data.calibration_loader` (`"digits"`, `"mnist"`,
    an ImageFolder directory, a `.pt` file) or an image tensor `[N, C, H, W]` (already standardised;
    `calibration_label` then names it in the report); `batch_size * num_batches` images are used, resized
    to the model's input. Activation ranges come from `calibrate_method` (`"minmax"`, `"percentile"`,
    `"entropy"`); weights are int8, activations `"uint8"` (default) or `"int8"`. ONNX Runtime fuses
    uint8-activation QDQ groups into integer kernels on every CPU; int8 activations only where
    `session.qdqisint8allowed` is on (its ARM default, and ORT files converted for `arm`), and on x86 they measured
    2.7x slower than uint8 on resnet18 (docs/deployment.md). The model is first pre-processed (shape inference and
    optimization, `quant_pre_process`) when `preprocess`.

    `reduce_range` (`"auto"`, `True`, `False`): quantize weights to 7 bits. On x86 CPUs without VNNI, ONNX
    Runtime's U8S8 kernels add pairs of products in 16 bits and saturate with full 8-bit weights (measured: top-1
    agreement 0.66 on an AVX2 machine), a documented ONNX Runtime limitation whose documented remedy is reduced
    range; `"auto"` turns it on exactly there (`pfgdf_plugin.measure.platform.int8_kernels`). The choice and the
    CPU kind are recorded in the result and the model's metadata.

    Reports the top-1 agreement of the INT8 and float models on the calibration images (a proxy for
    quantization damage, not an accuracy) and the file sizes. `pfgdf.*` metadata is carried over.

    Returns:
        What was written, with the agreement proxy, the output error and the sizes.

    Raises:
        FileNotFoundError: `onnx_path` or a calibration path does not exist.
        ValueError: bad argument, a model whose input size is not fixed, or unusable calibration data
            (all before anything is written).

    Examples:
        >>> import tempfile, os
        >>> from pfgdf_plugin.models.zoo import CifarVGG
        >>> from pfgdf_plugin.deploy.onnx import export_onnx
        >>> d = tempfile.mkdtemp()
        >>> src = export_onnx(CifarVGG(), os.path.join(d, "vgg.onnx"), (3, 32, 32)).path
        >>> q = quantize_int8(src, os.path.join(d, "vgg.int8.onnx"), "digits", num_batches=1)
        >>> q.size_ratio < 0.5
        True
    """
    source = check.input_file("onnx_path", onnx_path, (".onnx",))
    target = check.output_file("output_path", output_path, ".onnx")
    check.distinct([source], [target])
    activation_type = check.one_of("activation_type", activation_type, ACTIVATION_TYPES)
    calibrate_method = check.one_of("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    batch_size = check.integer("batch_size", batch_size, 1)
    num_batches = check.integer("num_batches", num_batches, 1)
    kernels = int8_kernels()
    if reduce_range == "auto":
        reduce_range = kernels == "x86-no-vnni" and activation_type == "uint8"
    reduce_range = check.boolean("reduce_range", reduce_range)
    proto = load_graph("onnx_path", source)
    images, found = _calibration_images(calibration, fixed_input_shape(proto), batch_size, num_batches, seed)
    description, batched = calibration_label or found, batch_is_dynamic(proto)

    with tempfile.TemporaryDirectory(prefix="pfgdf-int8-") as tmp, quiet_tools(verbose):
        model_in = _preprocessed(source, Path(tmp) / "pre.onnx") if preprocess else None
        quantized = _quantize(model_in or source, Path(tmp) / "int8.onnx", proto, images, batch_size, batched,
                              per_channel, activation_type, calibrate_method, reduce_range)
    quantization = (f"QDQ int8 weights{' (7-bit range)' if reduce_range else ''}, {activation_type} activations, "
                    f"{'per-channel' if per_channel else 'per-tensor'}, {calibrate_method} calibration on "
                    f"{description}; CPU int8 kernels: {kernels}")
    set_metadata(quantized, prefixed_metadata(proto) | {"variant": "int8", "quantization": quantization})
    check_graph(quantized)
    data = quantized.SerializeToString()

    float_out, int8_out = (first_output(create_session(m), images, batched) for m in (source, data))
    agreement, classes = _top1_agreement(float_out, int8_out)
    _io.write_with(target, lambda fh: fh.write(data))
    return Int8Export(
        path=target, source=source, calibration=description, images=len(images), per_channel=per_channel,
        activation_type=activation_type, preprocessed=model_in is not None, top1_agreement=agreement,
        float_classes=classes, max_abs_error=float(np.abs(float_out - int8_out).max()),
        max_abs_output=float(np.abs(float_out).max()), size_bytes=target.stat().st_size,
        source_size_bytes=source.stat().st_size, reduce_range=reduce_range, kernels=kernels,
    )


def _preprocessed(source: Path, staged: Path) -> Path | None:
    """`quant_pre_process` (shape inference, optimization) into `staged`; `None` when it cannot run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(staged))
        return staged
    except Exception as err:  # symbolic shape inference does not know every op; quantize without it
        print(f"quantize_int8: pre-processing skipped ({err})", file=sys.stderr)
        return None


def _quantize(model_in: Path, staged: Path, proto: Any, images: np.ndarray, batch_size: int, batched: bool,
              per_channel: bool, activation_type: str, calibrate_method: str, reduce_range: bool) -> Any:
    """Run `quantize_static` (QDQ, int8 weights) into `staged`; the quantized `onnx.ModelProto`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    input_name = proto.graph.input[0].name
    step = batch_size if batched else 1

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([images[i : i + step] for i in range(0, len(images), step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    quantize_static(
        str(model_in), str(staged), _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[calibrate_method],
    )
    return onnx.load(str(staged))


def _top1_agreement(float_out: np.ndarray, int8_out: np.ndarray) -> tuple[float | None, int | None]:
    """Share of equal top-1 classes and the number of distinct float classes; `None` for non-classifiers."""
    if float_out.ndim == 2 and float_out.shape[1] > 1:
        agreement = float((float_out.argmax(1) == int8_out.argmax(1)).mean())
        return agreement, len(np.unique(float_out.argmax(1)))
    return None, None


def _calibration_images(
    calibration: object, shape: tuple[int, ...], batch_size: int, num_batches: int, seed: int
) -> tuple[np.ndarray, str]:
    """`batch_size * num_batches` images fitted to `shape`, as float32, and a description of where they came from."""
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
