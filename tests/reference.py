"""Independent float64 numpy implementations of the definitions, used as test oracles."""

import numpy as np
import torch
import torch.nn as nn


def statistic(rows: np.ndarray, kind: str) -> np.ndarray:
    rows = rows.astype(np.float64)
    if kind == "l1":
        return np.abs(rows).sum(axis=1)
    if kind == "l2":
        return np.sqrt((rows**2).sum(axis=1))
    if kind == "mean":
        return rows.mean(axis=1)
    raise AssertionError(kind)


def gaussian_z(stat: np.ndarray) -> np.ndarray:
    """|s - mean| / std (population std), straight from the definition."""
    sigma = np.std(stat)
    return np.abs(stat - np.mean(stat)) / sigma


def filter_rows(layer: nn.Module) -> np.ndarray:
    """One row per output channel (filter), for plain, depthwise and transposed (groups=1) convs and linears."""
    w = layer.weight.detach().double().numpy()
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
        assert layer.groups == 1
        w = np.swapaxes(w, 0, 1)
    return w.reshape(w.shape[0], -1)


def layer_z(layer: nn.Module, kind: str = "l1") -> np.ndarray:
    return gaussian_z(statistic(filter_rows(layer), kind))


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()
