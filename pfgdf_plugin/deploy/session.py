"""The one place that opens an ONNX Runtime `InferenceSession` (CPU execution provider), and runs it.

Examples:
    >>> import tempfile, os
    >>> from pfgdf_plugin.models.zoo import CifarVGG
    >>> from pfgdf_plugin.deploy.onnx import export_onnx
    >>> path = export_onnx(CifarVGG((8, "M")), os.path.join(tempfile.mkdtemp(), "m.onnx"), (3, 8, 8)).path
    >>> session = create_session(path, threads=1, inter_op_threads=1, spinning=False)
    >>> outputs(session, np.zeros((1, 3, 8, 8), np.float32))[0].shape
    (1, 10)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.threads import current_threads

# onnxruntime.GraphOptimizationLevel members by short name; "all" is ONNX Runtime's own default.
OPTIMIZATION_LEVELS: dict[str, str] = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def create_session(
    model: str | os.PathLike | bytes,
    *,
    threads: int | None = None,
    inter_op_threads: int | None = None,
    spinning: bool | None = None,
    config: Mapping[str, str] | None = None,
    disabled_optimizers: Sequence[str] | None = None,
    optimization_level: str = "all",
) -> Any:
    """An `onnxruntime.InferenceSession` on the CPU execution provider, sequential execution, errors-only logging.

    Args:
        model: an `.onnx` / `.ort` file, or a serialized model.
        threads: intra-op threads (1 = one edge core); `None`: the process's setting
            (`pfgdf_plugin._util.threads.current_threads`, what `--threads` set), so torch and ONNX Runtime agree.
            Latency measurements pass their own count.
        inter_op_threads: inter-op threads; `None` leaves ONNX Runtime's default (unused in sequential mode).
        spinning: let idle intra-op threads spin (`session.intra_op.allow_spinning`); `None` leaves the default.
        config: extra session config entries, e.g. `{"session.qdqisint8allowed": "1"}`.
        disabled_optimizers: graph optimizers to switch off by name, e.g. `["NchwcTransformer"]`.
        optimization_level: `"disable"`, `"basic"`, `"extended"` or `"all"` (the default).

    Returns:
        The session.

    Raises:
        ValueError: a bad argument, or a model ONNX Runtime cannot load.
    """
    import onnxruntime as ort

    if threads is None:
        threads = current_threads()

    level = check.one_of("optimization_level", optimization_level, tuple(OPTIMIZATION_LEVELS))
    options = ort.SessionOptions()
    options.intra_op_num_threads = check.integer("threads", threads, 1)
    if inter_op_threads is not None:
        options.inter_op_num_threads = check.integer("inter_op_threads", inter_op_threads, 1)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[level])
    options.log_severity_level = 3
    entries = dict(config or {})
    if spinning is not None:
        entries["session.intra_op.allow_spinning"] = "1" if check.boolean("spinning", spinning) else "0"
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled_optimizers) if disabled_optimizers else None)
    except Exception as err:
        where = "the exported model" if isinstance(model, bytes) else repr(source)
        raise ValueError(f"ONNX Runtime cannot load {where}: {err}") from err


def outputs(session: Any, x: np.ndarray) -> list[np.ndarray]:
    """All outputs of `session` on `x`, fed to its first input."""
    return session.run(None, {session.get_inputs()[0].name: x})


def outputs_per_sample(session: Any, x: np.ndarray) -> list[np.ndarray]:
    """All outputs, one sample at a time (for fixed-batch models), concatenated along the batch."""
    runs = [outputs(session, x[i : i + 1]) for i in range(len(x))]
    return [np.concatenate(parts) for parts in zip(*runs, strict=True)]


def first_output(session: Any, x: np.ndarray, batched: bool) -> np.ndarray:
    """The first output on all of `x`: 64 samples a run when the batch is dynamic, else one at a time."""
    step = 64 if batched else 1
    return np.concatenate([outputs(session, x[i : i + step])[0] for i in range(0, len(x), step)])
