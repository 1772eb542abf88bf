"""Run a model in eval mode for a while and give every submodule its own training flag back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (so forward passes update no statistics), then restore each flag.

    Examples:
        >>> net = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout())
        >>> _ = net[1].eval()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net[0].training, net[1].training
        (True, False)
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training
