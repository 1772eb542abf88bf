"""CHIP as a Torch-Pruning importance: calibrate on a model's feature maps, then score dependency groups.

`CHIPImportance` hooks a model during `CHIPImportance.calibrate` (see `session`), keeps per-channel sums
(`LayerStats`), and scores a group from the tensor chosen by ``feature``, normalised per layer and combined over
the group's coupled layers. The channel independence itself is computed in `pfgdf_plugin.criteria.chip.math`.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import graph_of, module_name
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin._util.validate import integer, one_of
from pfgdf_plugin.criteria.channels import (
    REDUCTIONS,
    ChannelSlice,
    Reduction,
    channel_slices,
    reduce_to_group,
)
from pfgdf_plugin.criteria.chip.session import HOOKED_TYPES, CalibrationSession, channels_of
from pfgdf_plugin.criteria.chip.stats import LayerStats, all_reduce_stats
from pfgdf_plugin.models.layers import is_depthwise

Feature = Literal["output", "input", "norm"]
FEATURES: tuple[str, ...] = ("output", "input", "norm")
"""Which tensor carries a group's channels. ``output``: the raw output of the layers producing the channels.
``input``: what the layers consuming the channels read (the post-activation map in conv-norm-act chains, the
post-add map in residual stages). ``norm``: the output of the group's norm layers."""

Normalization = Literal["mean", "rms", "none"]
NORMALIZATIONS: tuple[str, ...] = ("mean", "rms", "none")


def _state_fingerprint(model: nn.Module) -> str:
    """Digest of every tensor in the state dict (names, dtypes, shapes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shape_signature(model: nn.Module) -> tuple:
    return tuple((n, tuple(t.shape)) for n, t in model.state_dict().items())


class CHIPImportance(tp.importance.Importance):
    """CHannel Independence-based Pruning (CHIP) as a Torch-Pruning importance, computed exactly and streamed.

    Calibrate once, by running a few batches through the model inside `calibrate`; then, called with a
    dependency group, the importance returns one score per channel: the channel's mean channel independence
    ``CI_c`` over the calibration samples (low = nearly a combination of the other channels = pruned first),
    divided by its layer's scale, and averaged over the group's coupled layers.

    Which tensor carries a group's channels (``feature``; the default was chosen by accuracy after pruning trained
    networks, see ``docs/chip.md``):

    * ``"output"`` (default): the raw outputs of the layers producing the channels: convs, linears, depthwise
      convs; in a residual stage, every conv whose output is added into the stream.
    * ``"input"``: what the layers *consuming* the channels read: every conv/linear whose input channels are in
      the group, and depthwise convs. In conv-norm-activation chains that is the post-activation map (what the
      reference hooks); in a residual stage it is the post-add map each block reads. Consumers that read a pooled
      vector (one position: squeeze-excitation, the classifier) are used only when the group has no consumer
      with a spatial map; layers reading the very same tensor count once.
    * ``"norm"``: the outputs of the group's affine norm layers (an error for a group without one).

    Scores: per hooked tensor, the mean CI over samples divided by the mean over the tensor's channels
    (``normalization="mean"``), so every layer's scores average 1 and one global threshold (``prune(...,
    target_macs=...)``) compares channels with their own layer; the order within a layer is the raw CI's.
    ``"rms"`` divides by the root mean square of the channels' row norms instead (an orthogonal channel of average
    energy scores 1, a layer of copies ``1 / (2 sqrt(C))``), which empties layers whose maps have fewer positions
    than channels; ``"none"`` keeps the raw mean CI. Raw CI stays available from `layer_ci`.

    Args:
        feature: ``"output"``, ``"input"`` or ``"norm"`` (see above).
        normalization: ``"mean"``, ``"rms"`` or ``"none"``.
        group_reduction: how coupled layers' scores combine per channel: ``"mean"``, ``"max"``, ``"min"`` or
            ``"first"``.
        chunk_bytes: float64 working-set size per CI computation (samples of a batch are processed in chunks).

    Raises:
        ValueError: on an unknown option. When called: before calibration, on a model that changed since
            calibration, or on a group whose layers the calibration batches never reached (naming them).

    Examples:
        >>> import timm, torch
        >>> from pfgdf_plugin import prune
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> imp = CHIPImportance()
        >>> with imp.calibrate(model):
        ...     for _ in range(2):
        ...         _ = model(torch.randn(4, 3, 64, 64))
        >>> result = prune(model, torch.randn(1, 3, 64, 64), importance=imp, target_macs=0.5)
        >>> round(result.macs_kept, 1), result.model(torch.randn(2, 3, 64, 64)).shape
        (0.5, torch.Size([2, 10]))
    """

    def __init__(
        self,
        feature: Feature = "output",
        normalization: Normalization = "mean",
        group_reduction: Reduction = "mean",
        chunk_bytes: int = 1 << 26,
    ) -> None:
        one_of("feature", feature, FEATURES)
        one_of("normalization", normalization, NORMALIZATIONS)
        one_of("group_reduction", group_reduction, REDUCTIONS)
        self.feature: Feature = feature
        self.normalization: Normalization = normalization
        self.group_reduction: Reduction = group_reduction
        self.chunk_bytes = integer("chunk_bytes", chunk_bytes, 1)
        self._stats: dict[str, LayerStats] | None = None
        self._aliases: dict[str, str] = {}
        self._fingerprint: str | None = None
        self._session: CalibrationSession | None = None
        self._checked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.batches = 0

    def __repr__(self) -> str:
        return (
            f"CHIPImportance(feature={self.feature!r}, normalization={self.normalization!r}, "
            f"group_reduction={self.group_reduction!r})"
        )

    @contextlib.contextmanager
    def calibrate(self, model: nn.Module) -> Iterator[CHIPImportance]:
        """Hook ``model`` so that every forward inside the block accumulates CI, batch by batch.

        Inside the block the model runs in eval mode without gradients (both restored afterwards); only per-channel
        sums are kept, never feature maps. Each call starts from scratch. A forward that raises leaves no partial
        sums. When ``torch.distributed`` is initialised, the sums are all-reduced across ranks on leaving the
        block (every rank must leave it).

        Raises:
            ValueError: ``model`` is not a module or has no layer to hook; on leaving the block, no batch was
                run; inside it, a batch of another per-sample shape than the first, a layer receiving the
                wrong number of channels, or NaN/Inf activations (each naming the layer). The model's state,
                modes and hooks are left as they were.

        Examples:
            >>> import torch
            >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
            >>> imp = CHIPImportance()
            >>> with imp.calibrate(net):
            ...     _ = net(torch.randn(5, 3, 16, 16))
            >>> tuple(imp.layer_ci("0").shape), imp.stats["0"].samples   # conv "0": 8 output channels, 5 maps
            ((8,), 5)
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self._session is not None:
            raise RuntimeError("calibrate() is already running for this importance; blocks cannot nest")
        kinds = HOOKED_TYPES[self.feature]
        targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
        if not targets:
            raise ValueError(f"model has no {'norm' if self.feature == 'norm' else 'conv or linear'} layer to hook")
        stats = {n: LayerStats(n, channels_of(m, self.feature)) for n, m in targets}
        session = CalibrationSession(model, stats, self.feature, self.chunk_bytes)
        self._stats, self._fingerprint, self._aliases, self.batches = None, None, {}, 0
        self._checked = weakref.WeakKeyDictionary()
        handles = []
        try:
            for handle in session.register(targets):
                handles.append(handle)
            self._session = session
            with torch.no_grad(), eval_mode(model):
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self._session = None
        if session.batches == 0:
            raise ValueError(
                "calibrate(): no batch ran through the model inside the block; run at least one, e.g. "
                "`for images, _ in loader: model(images)`"
            )
        session.batches = all_reduce_stats(stats, session.batches)
        self._stats, self._aliases, self.batches = stats, dict(session.aliases), session.batches
        self._fingerprint = _state_fingerprint(model)

    @property
    def stats(self) -> dict[str, LayerStats]:
        """Per hooked layer name, its `LayerStats` (empty before calibration)."""
        return dict(self._stats or {})

    def layer_ci(self, name: str) -> torch.Tensor:
        """Raw mean CI per channel of the tensor hooked at layer ``name`` (float64, unnormalised)."""
        return self._layer(name).mean_ci()

    def layer_scores(self, name: str) -> torch.Tensor:
        """Per channel of layer ``name``, the score groups are built from (normalised as configured)."""
        st = self._layer(name)
        ci = st.mean_ci()
        if self.normalization == "none":
            return ci
        scale = st.rms() if self.normalization == "rms" else float(ci.mean())
        return ci / scale if scale > 0 else torch.zeros_like(ci)

    def _layer(self, name: str) -> LayerStats:
        if self._stats is None:
            raise ValueError(self._not_calibrated())
        if name not in self._stats:
            raise ValueError(f"no layer named {name!r} was hooked during calibration")
        return self._stats[name]

    def _not_calibrated(self) -> str:
        return (
            "CHIPImportance has no calibration data: run a few batches inside `with imp.calibrate(model): ...` "
            "before scoring"
        )

    def _check_model(self, graph: tp.DependencyGraph) -> None:
        model = getattr(graph, "model", None)
        if model is None:
            return
        signature = _shape_signature(model)
        if self._checked.get(graph) == signature:
            return
        if _state_fingerprint(model) != self._fingerprint:
            raise ValueError(
                "the model changed since calibration (its weights, buffers or shapes differ); CHIP scores "
                "describe the calibrated model only: calibrate again before pruning"
            )
        self._checked[graph] = signature

    def members(self, group: tp.dependency.Group) -> list[tuple[ChannelSlice, str]]:
        """The group's members whose hooked tensors score it, each with the name its sums are stored under."""
        slices = channel_slices(group)
        if self.feature == "input":
            chosen = [s for s in slices if s.role == "in" or (s.role == "out" and is_depthwise(s.layer))]
        elif self.feature == "output":
            chosen = [s for s in slices if s.role == "out"]
        else:
            chosen = [s for s in slices if s.role == "norm"]
            if not chosen and slices:
                root = module_name(graph_of(group), group[0].dep.target.module)
                raise ValueError(
                    f"feature='norm': the group of layer {root!r} has no affine norm layer; "
                    "use feature='input' or 'output'"
                )
        out: list[tuple[ChannelSlice, str]] = []
        seen: set[str] = set()
        for s in chosen:
            key = self._aliases.get(s.name, s.name)
            if key not in seen:
                seen.add(key)
                out.append((s, key))
        stats = self._stats or {}
        spatial = [(s, k) for s, k in out if k in stats and stats[k].positions > 1]
        return spatial if spatial else out

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        if self._session is not None:
            raise RuntimeError("score the model after the calibrate() block has ended")
        if self._stats is None:
            raise ValueError(self._not_calibrated())
        self._check_model(graph_of(group))
        members = self.members(group)
        if not members:
            return None
        missing = [k for _, k in members if k not in self._stats]
        if missing:
            raise ValueError(f"layer(s) {', '.join(map(repr, missing))} were not hooked during calibration")
        unreached = [k for _, k in members if self._stats[k].samples == 0]
        if unreached:
            raise ValueError(
                f"no calibration data for layer(s) {', '.join(map(repr, unreached))}: the calibration batches "
                "never ran through them, so CHIP cannot score their channels (run batches that reach them, or "
                "pass them to prune(ignored_layers=...))"
            )
        for s, key in members:
            have = channels_of(s.layer, self.feature)
            if have != self._stats[key].channels:
                raise ValueError(
                    f"layer {s.name!r} has {have} channels now but {self._stats[key].channels} when calibrated; "
                    "calibrate again before pruning"
                )
        slices = [s for s, _ in members]
        scores = [self.layer_scores(k)[list(s.idxs)] for s, k in members]
        return reduce_to_group(group, slices, scores, self.group_reduction)
