"""CHIP's own calibration data: what ``CHIPImportance(calibration=...)`` accepts, and the loop that runs it.

`CalibrationData` wraps a DataLoader, any re-iterable of batches (a list of tensors or of ``(images, labels)``
pairs) or one tensor (a single batch), and hands out the image tensors of its batches each time it is iterated.
A one-shot iterator (a generator) is read once and its batches are kept, so every recalibration sees the same
images. `run_batches` moves each batch to the model's device and runs the model on it.

Examples:
    >>> import torch
    >>> data = CalibrationData([(torch.zeros(2, 3), torch.ones(2)), torch.ones(4, 3)], num_batches=None)
    >>> [tuple(x.shape) for x in data]
    [(2, 3), (4, 3)]
    >>> run_batches(torch.nn.Linear(3, 1), data)
    2
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from pfgdf_plugin._util import validate
from pfgdf_plugin.models.inputs import images_of


def checked_images(batch: object, index: int) -> torch.Tensor:
    """The image tensor of one batch (`images_of`), or an error naming the batch's position."""
    images = images_of(batch)
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"calibration batch {index + 1} must be a tensor or an (images, labels) pair, got {type(batch).__name__}"
        )
    return images


class CalibrationData:
    """Calibration batches that can be iterated again and again (one per recalibration).

    Args:
        data: a ``torch.utils.data.DataLoader``, an iterable of batches (each a tensor or an ``(images, ...)``
            tuple or list), or one tensor (one batch, first dimension = samples).
        num_batches: use at most this many batches per calibration (``None``: all).

    Raises:
        ValueError: ``data`` is none of these, or ``num_batches`` is not an integer >= 1. A batch that is not a
            tensor or a pair raises when it is reached, naming its position.
    """

    def __init__(self, data: object, num_batches: int | None) -> None:
        self.num_batches = validate.optional_int("calibration_batches", num_batches, 1)
        if isinstance(data, torch.Tensor):
            if data.ndim < 1 or data.shape[0] == 0:
                raise ValueError(
                    f"calibration must hold at least one sample, got a tensor of shape {tuple(data.shape)}"
                )
            self._batches: Iterable[object] = [data]
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
            self._batches = data
        else:
            raise ValueError(
                "calibration must be a DataLoader, an iterable of batches (tensors or (images, labels) pairs) or a "
                f"tensor, got {type(data).__name__}"
            )
        # An iterator is exhausted by its first pass: keep what it yields so that the next calibration sees it too.
        self._one_shot = iter(self._batches) is self._batches  # type: ignore[call-overload]

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._one_shot:
            self._batches = list(itertools.islice(self._batches, self.num_batches))
            self._one_shot = False
        for i, batch in enumerate(itertools.islice(self._batches, self.num_batches)):
            yield checked_images(batch, i)

    def __repr__(self) -> str:
        kind = type(self._batches).__name__
        return f"CalibrationData({kind}, num_batches={self.num_batches})"


def run_batches(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run ``model`` on every batch (moved to the device of its first parameter or buffer); returns the count."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    count = 0
    for images in batches:
        model(images.to(first.device) if first is not None else images)
        count += 1
    return count
