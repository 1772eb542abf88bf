"""BatchNorm recalibration: pruning changes which channels feed every BatchNorm layer, so its running statistics
are stale and a pruned network is near chance until they are re-estimated from a few batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from pfgdf_plugin._util import validate
from pfgdf_plugin.models.inputs import images_of
from pfgdf_plugin.recovery.evaluate import first_batches


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance from ``loader``; returns batches used.

    Statistics are reset and accumulated as an exact average over the batches (``momentum=None``); only the
    norm layers run in training mode, so dropout and friends stay off. Each module's mode and momentum are
    restored afterwards. Batches are ``images`` or ``(images, labels)``.

    Raises:
        ValueError: if ``num_batches`` < 1, the model has no BatchNorm layer, or the loader yields nothing.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
        >>> recalibrate_bn(net, [torch.randn(8, 1, 6, 6) + 3.0 for _ in range(2)])
        2
        >>> float(net[1].running_mean.mean()) != 0.0
        True
    """
    validate.optional_int("num_batches", num_batches, 1)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("model has no BatchNorm layer to recalibrate")
    device = next(model.parameters()).device
    saved = [(m, m.training, getattr(m, "momentum", None)) for m in model.modules()]
    used = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for batch in first_batches(loader, num_batches):
            model(images_of(batch).to(device))
            used += 1
    finally:
        for m, training, momentum in saved:
            m.training = training
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = momentum
    if used == 0:
        raise ValueError("loader yielded no batch: nothing to recalibrate from")
    return used
