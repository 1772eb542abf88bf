"""One CHIP ``calibrate()`` block: the forward hooks that stream a model's feature maps into `LayerStats`.

Each hooked tensor is turned into ``[B, C, N]`` maps, its CI is computed chunk by chunk and only the per-channel
sums are staged; a forward's sums are committed when the model's forward completes, so a forward that raises
leaves none.

Examples:
    >>> import torch
    >>> from pfgdf_plugin.criteria.chip.stats import LayerStats
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    >>> session = CalibrationSession(net, {"0": LayerStats("0", 4)}, "output", chunk_bytes=1 << 20)
    >>> handles = list(session.register([("0", net[0])]))
    >>> with torch.no_grad():
    ...     _ = net(torch.randn(2, 3, 8, 8))
    >>> for handle in handles:
    ...     handle.remove()
    >>> session.batches, session.stats["0"].samples, session.stats["0"].positions
    (1, 2, 36)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from pfgdf_plugin.criteria.chip.math import NonFiniteMaps, chunked_ci
from pfgdf_plugin.criteria.chip.stats import LayerStats
from pfgdf_plugin.models.layers import NORM_TYPES, WEIGHTED_TYPES

HOOKED_TYPES: dict[str, tuple[type, ...]] = {"input": WEIGHTED_TYPES, "output": WEIGHTED_TYPES, "norm": NORM_TYPES}
"""Per feature (``"input"``, ``"output"``, ``"norm"``), the layer types whose tensors are hooked."""


def channels_of(module: nn.Module, feature: str) -> int:
    """Channels of the tensor hooked on ``module`` for ``feature``.

    Examples:
        >>> import torch
        >>> channels_of(torch.nn.Conv2d(3, 8, 1), "input"), channels_of(torch.nn.Linear(5, 2), "output")
        (3, 2)
    """
    if feature == "norm":
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[-1])
        return int(module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features)
    if isinstance(module, nn.Linear):
        return module.in_features if feature == "input" else module.out_features
    return module.in_channels if feature == "input" else module.out_channels


def _as_maps(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``[B, C, N]`` view of a hooked tensor: conv/norm maps ``[B, C, *spatial]``; linear and LayerNorm tensors
    ``[B, *tokens, F]`` become ``[B, F, tokens]`` (a plain ``[B, F]`` has one position)."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)):
        return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _bind(fn: Callable[..., None], name: str, layer: nn.Module) -> Callable[..., None]:
    def hook(*args: Any) -> None:
        fn(name, layer, *args)

    return hook


class CalibrationSession:
    """One ``calibrate()`` block: hooks stage each forward's sums, committed only when the forward completes.

    Args:
        model: the model whose forwards count as calibration batches.
        stats: per hooked layer name, the sums to accumulate into.
        feature: ``"input"``, ``"output"`` or ``"norm"``: which tensor of each hooked layer is read.
        chunk_bytes: float64 working-set size per CI computation.

    Attributes:
        batches: forwards of ``model`` completed so far.
        aliases: for ``feature="input"``, layer name -> the layer whose input was the very same tensor.
    """

    def __init__(self, model: nn.Module, stats: dict[str, LayerStats], feature: str, chunk_bytes: int) -> None:
        self.model = model
        self.stats = stats
        self.feature = feature
        self.chunk_bytes = chunk_bytes
        self.batches = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.active = False
        self.staging: dict[str, list] = {}
        self.seen: dict[int, tuple[weakref.ref, str]] = {}
        self.aliases: dict[str, str] = {}

    def register(self, targets: list[tuple[str, nn.Module]]) -> Iterator[RemovableHandle]:
        """Register the hooks (on the model, on each ``(name, layer)`` target, and input checks), yielding each
        handle as soon as it exists so that the caller can remove every one registered, even after an error."""
        yield self.model.register_forward_pre_hook(self.begin, with_kwargs=True)
        yield self.model.register_forward_hook(self.end)
        for name, module in targets:
            if self.feature == "input":
                yield module.register_forward_pre_hook(_bind(self.on_input, name, module))
            else:
                yield module.register_forward_hook(_bind(self.on_output, name, module))
        if self.feature != "input":
            for name, module in self.model.named_modules():
                if isinstance(module, WEIGHTED_TYPES):
                    yield module.register_forward_pre_hook(_bind(self.check_input, name, module))

    def begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module is not self.model or self.active:  # a copy carrying our hooks, or a nested call
            return
        x = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        if x is not None and x.ndim >= 1:
            shape = tuple(x.shape[1:])
            if self.sample_shape is None:
                self.sample_shape = shape
            elif shape != self.sample_shape:
                raise ValueError(
                    f"calibration batch {self.batches + 1} has per-sample shape {shape}, but the first batch had "
                    f"{self.sample_shape}; feed every calibration batch at one input size"
                )
        self.staging, self.seen, self.active = {}, {}, True

    def end(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module is not self.model or not self.active:
            return
        for name, (ci, energy, bound, samples, positions) in self.staging.items():
            self.stats[name].add(ci, energy, bound, samples, positions)
        self.batches += 1
        self.staging, self.seen, self.active = {}, {}, False

    def on_input(self, name: str, layer: nn.Module, module: nn.Module, args: tuple) -> None:
        if module is layer and args:
            self._record(name, layer, args[0], "input")

    def check_input(self, name: str, layer: nn.Module, module: nn.Module, args: tuple) -> None:
        """Name the layer when a batch does not fit it, before the layer's own error."""
        if module is layer and args and isinstance(args[0], torch.Tensor) and args[0].ndim >= 2:
            x = args[0]
            want = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            got = x.shape[-1] if isinstance(layer, nn.Linear) else x.shape[1]
            if got != want:
                raise ValueError(
                    f"layer {name!r} expects {want} channels at its input, got a tensor of shape "
                    f"{tuple(x.shape)}; check the calibration images' channels and size"
                )

    def on_output(self, name: str, layer: nn.Module, module: nn.Module, args: tuple, output: Any) -> None:
        if module is layer:
            self._record(name, layer, output[0] if isinstance(output, (tuple, list)) else output, "output")

    def _record(self, name: str, layer: nn.Module, x: object, where: str) -> None:
        if not self.active:
            raise ValueError(
                f"layer {name!r} ran outside a call of the model given to calibrate(); inside the block call "
                "the model itself, model(images), not one of its submodules"
            )
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
            raise ValueError(f"the {where} of layer {name!r} is not a float tensor with a batch dimension")
        channels = self.stats[name].channels
        got = x.shape[-1] if isinstance(layer, (nn.Linear, nn.LayerNorm)) else x.shape[1]
        if got != channels:
            raise ValueError(
                f"layer {name!r} expects {channels} channels at its {where}, got a tensor of shape "
                f"{tuple(x.shape)}; check the calibration images' channels and size"
            )
        if self.feature == "input":  # two layers reading the same tensor (a block's conv and its shortcut)
            hit = self.seen.get(id(x))
            if hit is not None and hit[0]() is x:
                self.aliases[name] = hit[1]
                self._stage(name, self.staging[hit[1]])
                return
            self.seen[id(x)] = (weakref.ref(x), name)
        maps = _as_maps(x.detach(), layer)
        self._stage(name, [*self._sums(maps, name, where), maps.shape[0], maps.shape[2]])

    def _sums(self, maps: torch.Tensor, name: str, where: str) -> list[torch.Tensor]:
        """Per-channel sums over the batch of CI, energy and error bound, on the CPU."""
        ci = energy = bound = None
        try:
            for part_ci, part_bound, part_energy in chunked_ci(maps, self.chunk_bytes):
                sums = (part_ci.sum(0), part_energy.sum(0), part_bound.sum(0))
                ci, energy, bound = sums if ci is None else (ci + sums[0], energy + sums[1], bound + sums[2])
        except NonFiniteMaps:
            raise ValueError(
                f"NaN or Inf in the {where} of layer {name!r} in calibration batch {self.batches + 1}; "
                "check the images and the weights of the layers before it"
            ) from None
        return [ci.cpu(), energy.cpu(), bound.cpu()]

    def _stage(self, name: str, sums: list) -> None:
        if name in self.staging:  # a layer run twice in one forward: both maps count
            old = self.staging[name]
            sums = [old[0] + sums[0], old[1] + sums[1], old[2] + sums[2], old[3] + sums[3], sums[4]]
        self.staging[name] = list(sums)
