"""Deployment: ONNX export with parity, ONNX Runtime's mobile (ORT) format, INT8 quantization."""

from pfgdf_plugin.deploy.export import (
    Int8Export,
    OnnxExport,
    OrtExport,
    Parity,
    ParityError,
    export_onnx,
    export_ort,
    quantize_int8,
)

__all__ = [
    "Int8Export", "OnnxExport", "OrtExport", "Parity", "ParityError", "export_onnx", "export_ort", "quantize_int8",
]
