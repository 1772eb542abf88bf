"""Evaluation: top-1 accuracy over ``(images, labels)`` batches, summed over ranks under ``torchrun``."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn as nn

from pfgdf_plugin.recovery.distributed import all_sum


def first_batches(loader: Iterable, limit: int | None) -> Iterable:
    """The loader's batches, at most ``limit`` of them (all when ``None``)."""
    return loader if limit is None else itertools.islice(loader, limit)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_batches: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``(images, labels)`` batches, in [0, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    try:
        for images, labels in first_batches(loader, num_batches):
            pred = model(images.to(device)).argmax(1).cpu()
            correct += int((pred == labels).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    # Under torchrun: ranks evaluating shards sum to the whole; ranks evaluating everything keep the ratio.
    correct, total = all_sum([correct, total])
    if total == 0:
        raise ValueError("evaluation loader yielded no batch")
    return correct / total
