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


class ParityError(RuntimeError):
    """An exported model's outputs differ from the reference by more than the tolerance; nothing was written."""


@dataclass
class Parity:
    """How far an exported model's outputs are from a reference on the same random inputs.

    `relative_error = max_abs_error / max_abs_output`; the export passes when it is <= `tolerance`.
    """

    reference: str
    samples: int
    max_abs_error: float
    max_abs_output: float
    tolerance: float

    @property
    def relative_error(self) -> float:
        """`max_abs_error / max_abs_output`."""
        return self.max_abs_error / max(self.max_abs_output, 1e-30)

    @property
    def passed(self) -> bool:
        """Whether `relative_error <= tolerance`."""
        return self.relative_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        """The fields and the derived `relative_error` and `passed`, JSON-ready."""
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
        # Also the body of ParityError messages, so it lives with the data.
        verdict = "ok" if self.passed else "FAILED"
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
    return Parity(reference, samples, err, scale, tolerance)


def float32_sensitivity(model: nn.Module, inputs: torch.Tensor, reference: list[np.ndarray]) -> float:
    """Relative gap between PyTorch's float32 outputs `reference` and a float64 copy of `model` on `inputs`.

    The model's own rounding sensitivity: the scale against which a failed parity check is judged.
    """
    double = copy.deepcopy(model).double()
    with eval_mode(double), torch.no_grad():
        exact = as_arrays(double(inputs.double()))
    err = max(float(np.abs(e - r).max()) for e, r in zip(exact, reference, strict=True))
    return err / max(max(float(np.abs(e).max()) for e in exact), 1e-30)
