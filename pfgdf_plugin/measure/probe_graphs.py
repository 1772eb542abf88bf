"""Probe graphs: one operator at its real input shape and given channel counts, as a tiny ONNX model.

Weights are made inside the graph by ``ConstantOfShape``, which ONNX Runtime folds into constant initializers
when the session is created, so a probe file is a few hundred bytes whatever its layer's size and the runtime
still sees constant weights (what its blocked-layout conv path requires, as in an exported model). Values do
not change latency on the CPU provider's float kernels.

Signatures (`signature` dicts) name an operator by what its cost depends on; `grid` lists the channel counts a
table measures per axis.

Examples:
    >>> sig = {"op": "conv", "batch": 1, "in": 32, "out": 64, "hw": [8, 8], "kernel": [3, 3], "stride": [1, 1],
    ...        "pads": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "depthwise": False}
    >>> axis_grids(sig, quantum=16, levels=8)
    {'in': [16, 32], 'out': [16, 32, 48, 64]}
    >>> data, shape = probe_graph(sig, {"in": 16, "out": 48})
    >>> shape, len(data) < 1000
    ([1, 16, 8, 8], True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "x"
OPERATORS = ("conv", "linear", "attention")


def axes_of(signature: dict[str, Any]) -> dict[str, int]:
    """The axes along which pruning changes an operator, with their full channel counts."""
    op = signature["op"]
    if op == "conv":
        if signature["depthwise"]:
            return {"out": signature["out"]}
        return {"in": signature["in"], "out": signature["out"]}
    if op == "linear":
        return {"in": signature["in"], "out": signature["out"]}
    if op == "attention":
        per = signature["heads"] if signature["unit"] == "dim" else signature["head_dim"]
        return {"width": signature["heads"] * signature["head_dim"], "per": per}
    raise ValueError(f"signature op must be one of {', '.join(OPERATORS)}, got {op!r}")


def grid(full: int, quantum: int, levels: int) -> list[int]:
    """Channel counts to measure: multiples of ``quantum`` up to ``full``, and ``full``; at most ``levels`` of
    them, evenly spread (always the smallest and ``full``).

    Examples:
        >>> grid(40, 16, 8), grid(256, 16, 4)
        ([16, 32, 40], [16, 96, 176, 256])
    """
    values = [*range(quantum, full, quantum), full]
    if len(values) <= levels:
        return values
    picks = sorted({round(i * (len(values) - 1) / (levels - 1)) for i in range(levels)})
    return [values[i] for i in picks]


def axis_grids(signature: dict[str, Any], quantum: int, levels: int) -> dict[str, list[int]]:
    """The grid per axis of ``signature``'s operator (grouped convs: multiples of the group count too)."""
    axes = axes_of(signature)
    if signature["op"] == "attention":
        per = axes.pop("per")  # one unit of the pruned kind: a head dimension of every head, or a whole head
        units = axes["width"] // per
        return {"width": [per * u for u in grid(units, 1, levels)]}
    groups = signature.get("groups", 1) if signature["op"] == "conv" and not signature.get("depthwise") else 1
    q = quantum * groups // math.gcd(quantum, groups)
    # One step or less wide: only the full count (the allocation keeps multiples of the step, so no fewer).
    return {a: grid(full, q if q < full or groups == 1 else groups, levels) for a, full in axes.items()}


def probe_graph(signature: dict[str, Any], counts: dict[str, int]) -> tuple[bytes, list[int]]:
    """The serialized ONNX probe of ``signature``'s operator at ``counts`` channels, and its input shape."""
    from onnx import TensorProto, helper

    op = signature["op"]
    nodes: list[Any] = []
    inits: list[Any] = []

    def constant(name: str, shape: list[int], value: float) -> str:
        inits.append(helper.make_tensor(f"{name}_shape", TensorProto.INT64, [len(shape)], shape))
        nodes.append(helper.make_node("ConstantOfShape", [f"{name}_shape"], [name],
                                      value=helper.make_tensor(f"{name}_value", TensorProto.FLOAT, [1], [value])))
        return name

    if op == "conv":
        c_out = counts["out"]
        c_in = c_out if signature["depthwise"] else counts["in"]
        groups = c_out if signature["depthwise"] else signature["groups"]
        shape = [signature["batch"], c_in, *signature["hw"]]
        w = constant("w", [c_out, c_in // groups, *signature["kernel"]], 0.01)
        b = constant("b", [c_out], 0.0)
        nodes.append(helper.make_node("Conv", [INPUT_NAME, w, b], ["y"], kernel_shape=signature["kernel"],
                                      strides=signature["stride"], pads=signature["pads"],
                                      dilations=signature["dilation"], group=groups))
    elif op == "linear":
        shape = [*signature["tokens"], counts["in"]]
        w = constant("w", [counts["in"], counts["out"]], 0.01)
        b = constant("b", [counts["out"]], 0.0)
        nodes += [helper.make_node("MatMul", [INPUT_NAME, w], ["h"]), helper.make_node("Add", ["h", b], ["y"])]
    elif op == "attention":
        # softmax(q k^T * scale) v with q = k = v = the input: the core's MatMuls and Softmax at its real sizes.
        width, per = counts["width"], axes_of(signature)["per"]
        heads = signature["heads"] if signature["unit"] == "dim" else width // per
        head_dim = width // heads
        shape = [signature["batch"], heads, signature["tokens"], head_dim]
        s = constant("scale", [1], head_dim ** -0.5)
        nodes += [
            helper.make_node("Transpose", [INPUT_NAME], ["kt"], perm=[0, 1, 3, 2]),
            helper.make_node("MatMul", [INPUT_NAME, "kt"], ["logits"]),
            helper.make_node("Mul", ["logits", s], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", INPUT_NAME], ["y"]),
        ]
    else:
        raise ValueError(f"signature op must be one of {', '.join(OPERATORS)}, got {op!r}")
    graph = helper.make_graph(nodes, f"probe_{op}", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                                                    shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pfgdf-probe")
    model.ir_version = IR_VERSION
    return model.SerializeToString(), shape


def overhead_graph() -> tuple[bytes, list[int]]:
    """A graph that does nothing (Identity on one float): its latency is the runtime's cost of one ``run`` call,
    which every probe pays once but a whole model pays once in all."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", [INPUT_NAME], ["y"])], "probe_overhead",
                              [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pfgdf-probe")
    model.ir_version = IR_VERSION
    return model.SerializeToString(), [1]


def grid_points(grids: dict[str, list[int]]) -> list[dict[str, int]]:
    """Every point of a grid, first axis outermost (the order `LatencyTable` stores milliseconds in)."""
    points: list[dict[str, int]] = [{}]
    for axis, values in grids.items():
        points = [{**p, axis: v} for p in points for v in values]
    return points


def nest(values: list[float], grids: dict[str, list[int]]) -> Any:
    """Flat values in `grid_points` order -> nested lists, first axis outermost."""
    arr = np.asarray(values, dtype=float).reshape([len(g) for g in grids.values()])
    return arr.tolist()
