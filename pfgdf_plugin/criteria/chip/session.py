"""One CHIP ``calibrate()`` block: the forward hooks that stream a model's feature maps into `LayerStats`.

Each hooked tensor is turned into ``[B, C, N]`` maps, its CI is computed chunk by chunk and only the per-channel
sums are staged; a forward's sums are committed when the model's forward completes, so a forward that raises
leaves none.

With ``feature="input"`` a layer that reads the output of a pooling layer (max-pooling between VGG stages, global
pooling before a classifier) is scored on the pooling layer's *input*, the post-activation map itself (what the
paper's VGG code hooks: the ReLU before pooling); its sums are stored under the pooling layer's name. The model's
own outputs are maps too: whatever consumes the model (a loss, the next stage) reads them, so channels that no
layer inside the model reads (a classifier's logits, a last conv's post-activation map) are scored on them. Their
sums are stored under `output_key` names, and the session notes which layer returned each output directly
(`CalibrationSession.output_of`).

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

_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)
POOL_TYPES: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
"""Pooling layers whose input, not output, scores the channels their readers read (``feature="input"``)."""


def output_key(index: int, channels_last: bool = False) -> str:
    """Name under which the sums of the model's ``index``-th output tensor are stored (``feature="input"``).

    A 3-D output ``[B, X, Y]`` is stored twice: channels along dim 1 (conv1d-style) and, ``channels_last``,
    along dim 2 (token-style); the group that reads it picks the one its layers use.

    Examples:
        >>> output_key(0), output_key(1, channels_last=True)
        ('<output 0>', '<output 1, channels last>')
    """
    return f"<output {index}{', channels last' if channels_last else ''}>"


def flatten_outputs(obj: object) -> list[object]:
    """A model's outputs as a flat list, in the order Torch-Pruning traces them (tensors, lists, tuples, dicts)."""
    if isinstance(obj, (list, tuple)):
        return [t for sub in obj for t in flatten_outputs(sub)]
    if isinstance(obj, dict):
        return [t for sub in obj.values() for t in flatten_outputs(sub)]
    return [obj]


def _output_views(t: torch.Tensor) -> list[tuple[bool, torch.Tensor]]:
    """``[B, C, N]`` views of an output tensor: ``[B, F]`` has one position; ``[B, X, Y]`` both ways."""
    if t.ndim == 2:
        return [(False, t.unsqueeze(-1))]
    if t.ndim == 3:
        return [(False, t), (True, t.transpose(1, 2))]
    return [(False, t.reshape(t.shape[0], t.shape[1], -1))]


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
    if isinstance(module, _CHANNELS_LAST):
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
        output_of: for ``feature="input"``, layer name -> `output_key` of the model output it returned itself.
        unowned_outputs: for ``feature="input"``, indices of the model outputs no hooked layer returned itself
            (Torch-Pruning gives each an output node), in order.
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
        self.produced: dict[str, tuple[weakref.ref, nn.Module]] = {}
        self.output_of: dict[str, str] = {}
        self.unowned_outputs: list[int] = []
        self.pooled: dict[int, tuple[weakref.ref, str, int]] = {}

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
        if self.feature == "input":  # which layer returns a model output itself (identity only, no CI)
            for name, module in self.model.named_modules():
                if isinstance(module, (*WEIGHTED_TYPES, *NORM_TYPES)):
                    yield module.register_forward_hook(_bind(self.on_produced, name, module))
                elif isinstance(module, POOL_TYPES):
                    yield module.register_forward_hook(_bind(self.on_pool, name, module))
        else:  # the input hooks of "input" check channel counts themselves
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
        self.staging, self.seen, self.produced, self.pooled, self.active = {}, {}, {}, {}, True

    def end(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module is not self.model or not self.active:
            return
        if self.feature == "input":
            self._record_outputs(output)
        for name, (ci, energy, bound, samples, positions) in self.staging.items():
            if name not in self.stats:  # a model output or a pooling layer's input, first seen in this batch
                self.stats[name] = LayerStats(name, int(ci.shape[0]))
            elif self.stats[name].channels != ci.shape[0]:
                raise ValueError(
                    f"calibration batch {self.batches + 1}: {name} has {ci.shape[0]} channels, but "
                    f"{self.stats[name].channels} in the batches before"
                )
            self.stats[name].add(ci, energy, bound, samples, positions)
        self.batches += 1
        self.staging, self.seen, self.produced, self.pooled, self.active = {}, {}, {}, {}, False

    def _record_outputs(self, output: Any) -> None:
        """CI of every float model output with a batch dimension, and which layer returned each one itself."""
        outputs = [t for t in flatten_outputs(output) if isinstance(t, torch.Tensor)]
        owner: dict[int, tuple[str, nn.Module]] = {}
        for name, (ref, layer) in self.produced.items():
            t = ref()
            if t is not None:
                owner[id(t)] = (name, layer)
        unowned = []
        for k, t in enumerate(outputs):
            if not t.is_floating_point() or t.ndim < 2 or t.shape[0] == 0:
                continue
            for last, maps in _output_views(t.detach()):
                key = output_key(k, last)
                self._stage(key, [*self._sums(maps, key, "output"), maps.shape[0], maps.shape[2]])
            hit = owner.get(id(t))
            if hit is None:
                unowned.append(k)
            else:
                name, layer = hit
                self.output_of[name] = output_key(k, t.ndim == 3 and isinstance(layer, _CHANNELS_LAST))
        self.unowned_outputs = unowned

    def on_pool(self, name: str, layer: nn.Module, module: nn.Module, args: tuple, output: Any) -> None:
        """CI of a pooling layer's input map; its output is remembered so that its readers alias to it."""
        x = args[0] if args else None
        if module is not layer or not self.active or not isinstance(output, torch.Tensor):
            return
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 3:
            return
        source = self._pooled_source(x)  # pooling of a pooled map: the map before the first pooling
        if source is not None:
            key = source[1]
        else:
            key = name
            maps = x.detach().reshape(x.shape[0], x.shape[1], -1)
            self._stage(key, [*self._sums(maps, key, "input"), maps.shape[0], maps.shape[2]])
        self.pooled[output.untyped_storage().data_ptr()] = (weakref.ref(output), key, int(x.shape[1]))

    def _pooled_source(self, x: torch.Tensor) -> tuple[weakref.ref, str, int] | None:
        """The pooling layer whose output ``x`` is (or is a view of, such as a flattened copy), if any.

        A live weak reference to that output means its storage is still in use, so a storage match is exact.
        """
        hit = self.pooled.get(x.untyped_storage().data_ptr())
        return hit if hit is not None and hit[0]() is not None else None

    def on_produced(self, name: str, layer: nn.Module, module: nn.Module, args: tuple, output: Any) -> None:
        if module is layer and isinstance(output, torch.Tensor):
            self.produced[name] = (weakref.ref(output), layer)

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
        got = x.shape[-1] if isinstance(layer, _CHANNELS_LAST) else x.shape[1]
        if got != channels:
            raise ValueError(
                f"layer {name!r} expects {channels} channels at its {where}, got a tensor of shape "
                f"{tuple(x.shape)}; check the calibration images' channels and size"
            )
        if self.feature == "input":
            pooled = self._pooled_source(x)
            if pooled is not None and pooled[2] == channels:  # a pooled map: the map before pooling scores it
                self.aliases[name] = pooled[1]
                self._stage(name, self.staging[pooled[1]])
                return
            # two layers reading the same tensor (a block's conv and its shortcut)
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
            what = name if name.startswith("<") else f"layer {name!r}"
            raise ValueError(
                f"NaN or Inf in the {where} of {what} in calibration batch {self.batches + 1}; "
                "check the images and the weights of the layers before it"
            ) from None
        return [ci.cpu(), energy.cpu(), bound.cpu()]

    def _stage(self, name: str, sums: list) -> None:
        if name in self.staging:  # a layer run twice in one forward: both maps count
            old = self.staging[name]
            sums = [old[0] + sums[0], old[1] + sums[1], old[2] + sums[2], old[3] + sums[3], sums[4]]
        self.staging[name] = list(sums)
