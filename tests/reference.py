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


def oracle_ci(a: np.ndarray, channels: list[int] | None = None) -> np.ndarray:
    """CHIP's definition: CI_c = ||A||_* - ||A with row c zeroed||_* for a [C, N] map, one float64 SVD per channel
    (for ``channels``, default all)."""
    a = np.asarray(a, dtype=np.float64)
    full = np.linalg.svd(a, compute_uv=False).sum()
    channels = range(a.shape[0]) if channels is None else channels
    out = np.empty(len(channels))
    for i, c in enumerate(channels):
        zeroed = a.copy()
        zeroed[c] = 0.0
        out[i] = full - np.linalg.svd(zeroed, compute_uv=False).sum()
    return out


def mean_oracle_ci(maps: list[np.ndarray]) -> np.ndarray:
    """Mean over samples of `oracle_ci`, for a list of [C, N] maps."""
    return np.mean([oracle_ci(m) for m in maps], axis=0)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties (Pearson correlation of the ranks)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their average rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


def capture_maps(model: nn.Module, module: nn.Module, batches: list[torch.Tensor], *, inputs: bool = False) -> list:
    """The output (or, ``inputs=True``, the first input) of ``module`` for every sample, as [C, N] float64 arrays
    (channels on dim 1, everything after it flattened), with one plain hook and the model in eval mode."""
    maps: list[np.ndarray] = []

    def grab(t: torch.Tensor) -> None:
        maps.extend(t.detach().reshape(t.shape[0], t.shape[1], -1).double().numpy())

    if inputs:
        handle = module.register_forward_pre_hook(lambda _m, args: grab(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _i, out: grab(out))
    training = model.training
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    handle.remove()
    model.train(training)
    return maps
