"""The errors prune() raises that callers may want to catch, and how inputs and failures are described."""

from __future__ import annotations

import torch
import torch.nn as nn


class GraphTimeoutError(RuntimeError):
    """Torch-Pruning's dependency graph of a model did not finish within ``graph_timeout`` seconds."""


class TargetOutOfReachError(ValueError):
    """Even pruning every prunable group to ``min_channels`` keeps more than the target (measured).

    Attributes:
        kind: ``"macs"``, ``"params"`` or ``"latency"``.
        target: the fraction asked for.
        floor: the smallest fraction this model reaches (everything not left alone pruned to the minimum).
    """

    def __init__(self, kind: str, target: float, floor: float, min_channels: int) -> None:
        why = (f"pruning every prunable group down to min_channels={min_channels} still keeps {floor:.1%} of "
               f"{kind} (the classifier, ignored layers and the groups left alone are never pruned)")
        if kind == "latency":
            super().__init__(
                f"the latency target (keep {target:.1%} of the latency, a {1 / target:.2f}x speed-up) is out of "
                f"reach: {why}. The best reachable is a {1 / floor:.2f}x speed-up ({floor:.1%} of the latency)."
            )
        else:
            super().__init__(f"target_{kind}={target:g} is out of reach: {why}. Ask for a fraction of at least "
                             f"{floor:.2f}.")
        self.kind, self.target, self.floor = kind, target, floor


def input_error(example_inputs: object, err: Exception) -> ValueError:
    """The ``ValueError`` for an ``example_inputs`` the model cannot run on."""
    shape = tuple(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else "?"
    return ValueError(f"example_inputs: the model cannot run on an input of shape {shape}: {err}")


def timeout_error(model: nn.Module, timeout: float | None, stage: str) -> GraphTimeoutError:
    """The ``GraphTimeoutError`` for a dependency graph that did not finish ``stage`` in time."""
    return GraphTimeoutError(
        f"Torch-Pruning's dependency graph of {type(model).__name__} did not finish {stage} within "
        f"graph_timeout={timeout:g} s. Pass the blocks it hangs on in ignored_layers (a CLI user: --ignore), "
        "a smaller example input, or a larger graph_timeout (None waits forever)."
    )


def short_error(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters, for reports."""
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
