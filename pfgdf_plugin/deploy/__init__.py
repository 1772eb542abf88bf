"""Deployment: ONNX export with parity, ONNX Runtime's mobile (ORT) format, INT8 quantization, the export bundle."""

from pfgdf_plugin.deploy.bundle import BundleConfig, BundleResult, export_bundle
from pfgdf_plugin.deploy.int8 import Int8Export, quantize_int8
from pfgdf_plugin.deploy.onnx import OnnxExport, export_onnx
from pfgdf_plugin.deploy.ort import OrtExport, export_ort
from pfgdf_plugin.deploy.parity import Parity, ParityError

__all__ = [
    "BundleConfig", "BundleResult", "Int8Export", "OnnxExport", "OrtExport", "Parity", "ParityError",
    "export_bundle", "export_onnx", "export_ort", "quantize_int8",
]
