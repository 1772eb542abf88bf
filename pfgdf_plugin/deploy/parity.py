"""Parity of an exported model with its reference: the relative error of its outputs on the same inputs.

Examples:
    >>> import numpy as np
    >>> p = compare_outputs("pytorch", [np.array([1.0, -2.0])], [np.array([1.0, -2.0001])], 1e-4, samples=1)
    >>> round(p.relative_error, 6), p.passed
    (5e-05, True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pfgdf_plugin._util.modes import eval_mode

# max |onnx - reference| / max |reference| over the parity inputs: float32 reassociation in fused kernels
# stays near 1e-6 on the models we test; 1e-4 leaves room for deep nets while catching any real mismatch.
PARITY_TOLERANCE = 1e-4
# A passing check says little when the outputs hardly depend on the input (max |output_i - output_0| below this
# share of max |output|: the coverage sweep's CONSTANT_OUTPUT), or when they are this small on standard-normal
# inputs: random-weight efficientnet_b0 gives 1.8e-5, its activations shrinking from 2.3 after the stem to 5e-4
# before the head (untrained BatchNorm statistics), so its later layers are tested on near-zero values only.
# Random-weight resnet18, mobilenetv3_small_100, convnext_atto, vit_tiny_patch16_224, regnetx_002 and ghostnet_100
# give 4e-3 to 1.4 (measured at 224x224, 4 inputs); mobilenetv3_small_050 trained on digits, 17.
WEAK_SPREAD = 1e-3
WEAK_SCALE = 1e-4


class ParityError(RuntimeError):
    """An exported model's outputs differ from the reference by more than the tolerance; nothing was written."""


@dataclass
class Parity:
    """How far an exported model's outputs are from a reference on the same random inputs.

    `relative_error = max_abs_error / max_abs_output`; the export passes when it is <= `tolerance`.
    `output_spread` is how much the reference outputs differ between the inputs, relative to their size (``None``
    with one input); `weakness` says when a pass proves little.

    Examples:
        >>> Parity("pytorch", 4, 1e-12, 2e-5, 1e-4).weakness
        'outputs at most 2e-05 on standard-normal inputs: the signal has all but vanished in the network'
        >>> str(Parity("pytorch", 4, 1e-12, 2e-5, 1e-4)).split(": ")[-1]
        'ok, but weak'
        >>> Parity("pytorch", 4, 1e-7, 3.0, 1e-4, output_spread=0.4).weakness is None
        True
    """

    reference: str
    samples: int
    max_abs_error: float
    max_abs_output: float
    tolerance: float
    output_spread: float | None = None

    @property
    def relative_error(self) -> float:
        """`max_abs_error / max_abs_output`."""
        return self.max_abs_error / max(self.max_abs_output, 1e-30)

    @property
    def passed(self) -> bool:
        """Whether `relative_error <= tolerance`."""
        return self.relative_error <= self.tolerance

    @property
    def weakness(self) -> str | None:
        """Why a pass proves little here (`WEAK_SCALE`, `WEAK_SPREAD`), or ``None``."""
        if self.max_abs_output < WEAK_SCALE:
            return (f"outputs at most {self.max_abs_output:.2g} on standard-normal inputs: the signal has all but "
                    "vanished in the network")
        if self.output_spread is not None and self.output_spread < WEAK_SPREAD:
            return (f"outputs almost the same for every input (they differ by {self.output_spread:.2g} of their "
                    "size): the check compares a constant")
        return None

    def to_dict(self) -> dict[str, Any]:
        """The fields and the derived `relative_error`, `passed` and `weakness`, JSON-ready."""
        return {
            "reference": self.reference,
            "samples": self.samples,
            "max_abs_error": self.max_abs_error,
            "max_abs_output": self.max_abs_output,
            "relative_error": self.relative_error,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "output_spread": self.output_spread,
            "weakness": self.weakness,
        }

    def __str__(self) -> str:
        # Also the body of ParityError messages, so it lives with the data.
        verdict = ("ok, but weak" if self.weakness else "ok") if self.passed else "FAILED"
        return (
            f"parity vs {self.reference}: max abs error {self.max_abs_error:.3g} / max abs output "
            f"{self.max_abs_output:.3g} = {self.relative_error:.3g} (tolerance {self.tolerance:g}, "
            f"{self.samples} random inputs): {verdict}"
        )


def as_arrays(out: object) -> list[np.ndarray]:
    """A model's output (a tensor or a tuple of tensors) as NumPy arrays.

    Raises:
        ValueError: any other output type (it cannot be exported).
    """
    if isinstance(out, torch.Tensor):
        return [out.detach().numpy()]
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return [t.detach().numpy() for t in out]
    raise ValueError(f"model output must be a tensor or a tuple of tensors to export, got {type(out).__name__}")


def compare_outputs(reference: str, expected: list[np.ndarray], got: list[np.ndarray], tolerance: float,
                    samples: int) -> Parity:
    """The `Parity` of `got` against `expected` (named `reference` in reports).

    Raises:
        ParityError: the outputs' number or shapes differ.
    """
    if len(expected) != len(got) or any(e.shape != g.shape for e, g in zip(expected, got, strict=False)):
        shapes = ([e.shape for e in expected], [g.shape for g in got])
        raise ParityError(f"output shapes differ from the reference: {shapes[1]} vs {shapes[0]}")
    err = max(float(np.abs(e.astype(np.float64) - g).max()) for e, g in zip(expected, got, strict=True))
    scale = max(float(np.abs(e).max()) for e in expected)
    return Parity(reference, samples, err, scale, tolerance, output_spread(expected, samples))


def output_spread(outputs: list[np.ndarray], samples: int) -> float | None:
    """How much ``outputs`` (one row per input) differ between the inputs, relative to their size.

    max |output_i - output_0| / max |output| over every output; ``None`` with one input, or when the outputs do
    not have one row per input.

    Examples:
        >>> output_spread([np.array([[1.0, 2.0], [1.0, 2.5]])], samples=2)
        0.2
        >>> output_spread([np.array([[1.0, 2.0]])], samples=1) is None
        True
    """
    if samples < 2 or any(o.ndim == 0 or o.shape[0] != samples for o in outputs):
        return None
    scale = max(float(np.abs(o).max()) for o in outputs)
    diff = max(float(np.abs(o.astype(np.float64) - o[:1]).max()) for o in outputs)
    return diff / max(scale, 1e-30)


def float32_sensitivity(model: nn.Module, inputs: torch.Tensor, reference: list[np.ndarray]) -> float:
    """Relative gap between PyTorch's float32 outputs `reference` and a float64 copy of `model` on `inputs`.

    The model's own rounding sensitivity: the scale against which a failed parity check is judged.
    """
    double = copy.deepcopy(model).double()
    with eval_mode(double), torch.no_grad():
        exact = as_arrays(double(inputs.double()))
    err = max(float(np.abs(e - r).max()) for e, r in zip(exact, reference, strict=True))
    return err / max(max(float(np.abs(e).max()) for e in exact), 1e-30)
