"""Calling a model on example inputs of any form, and describing what comes out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

Shapes = object  # nested tuples of torch.Size, mirroring the model's output structure


def run_model(model: nn.Module, example_inputs: torch.Tensor | tuple | list | dict) -> object:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)`` for a tensor, a sequence or a dict of inputs.

    Examples:
        >>> run_model(nn.Identity(), torch.zeros(2)).shape
        torch.Size([2])
    """
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def images_of(batch: object) -> object:
    """The images of a batch that is ``images`` or ``(images, labels, ...)`` (a tuple or list).

    Examples:
        >>> images_of((torch.zeros(2), torch.ones(2))).tolist(), images_of(torch.ones(1)).tolist()
        ([0.0, 0.0], [1.0])
    """
    return batch[0] if isinstance(batch, (tuple, list)) and batch else batch


def shapes_of(out: object) -> Shapes:
    """The shapes of a model output (a tensor, or lists / tuples / dicts of tensors) as nested tuples."""
    if isinstance(out, torch.Tensor):
        return out.shape
    if isinstance(out, dict):
        return tuple((k, shapes_of(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return tuple(shapes_of(v) for v in out)
    return None


def describe_shapes(shapes: Shapes) -> str:
    return str(tuple(shapes)) if isinstance(shapes, torch.Size) else str(shapes)


@contextlib.contextmanager
def outputs_of(model: nn.Module) -> Iterator[list[Shapes]]:
    """Record the output shapes of every forward pass of ``model`` made inside the block.

    The hook also fires inside ``tp.utils.count_ops_and_params``, which runs a deep copy of the model:
    deepcopy shares function objects, so the copy's hook appends to the same list.
    """
    shapes: list[Shapes] = []
    handle = model.register_forward_hook(lambda _m, _i, out: shapes.append(shapes_of(out)))
    try:
        yield shapes
    finally:
        handle.remove()
