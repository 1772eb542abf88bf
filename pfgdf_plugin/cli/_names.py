"""Names and defaults that help texts and ``choices=`` show, as plain values: building the parser imports nothing
heavy (the modules that own these values import torch, timm or ONNX Runtime, seconds before ``--help`` could print).

Each value is a copy of the one its owner defines (named in the comment); ``tests/test_cli_startup.py`` checks
every copy against its owner, so a change there that is not made here fails the suite instead of drifting.
"""

from __future__ import annotations

# pfgdf_plugin.data.BUILTIN
BUILTIN_DATA: tuple[str, ...] = ("digits", "mnist")
# pfgdf_plugin.criteria.STATISTICS
STATISTICS: tuple[str, ...] = ("l1", "l2", "mean")
# pfgdf_plugin.measure.latency.PROTOCOL_RUNS
PROTOCOL_RUNS = 50
# pfgdf_plugin.measure.profiling.LEVELS
PROFILE_LEVELS = 12

# pfgdf_plugin.studies.compare: CRITERIA, DATASETS, QUICK_SETTINGS
COMPARE_CRITERIA: tuple[str, ...] = ("pfgdf-l1", "pfgdf-l2", "pfgdf-mean", "pfgdf+l1", "pfgdf+fpgm", "pfgdf+chip",
                                     "chip", "l1", "l2", "fpgm", "bn-scale", "taylor", "random")
COMPARE_DATASETS: tuple[str, ...] = ("digits", "mnist")
COMPARE_QUICK: dict[str, object] = {"data": "digits", "targets": (0.5,), "seeds": (0, 1), "width": 8,
                                    "train_epochs": 5}

# pfgdf_plugin.studies.coverage: TARGET_MACS, MACS_KEPT_LIMIT, DEFAULT_TIMEOUT, DEFAULT_MEMORY_LIMIT_GB, and the
# model names of FAST_SUBSET
COVERAGE_TARGET_MACS = 0.5
COVERAGE_MACS_KEPT_LIMIT = 0.8
COVERAGE_TIMEOUT = 300.0
COVERAGE_MEMORY_LIMIT_GB = 12.0
COVERAGE_FAST: tuple[str, ...] = ("resnet10t", "mobilenetv3_small_050", "cspresnet50", "vit_tiny_patch16_224",
                                  "edgenext_xx_small")

# pfgdf_plugin.deploy: bundle.FORMATS, int8.ACTIVATION_TYPES, onnx.DEFAULT_OPSET, onnx.EXPORTERS,
# ort.TARGET_PLATFORMS, parity.PARITY_TOLERANCE
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "ort")
ACTIVATION_TYPES: tuple[str, ...] = ("uint8", "int8")
DEFAULT_OPSET = 18
EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
TARGET_PLATFORMS: tuple[str, ...] = ("arm", "amd64")
PARITY_TOLERANCE = 1e-4
