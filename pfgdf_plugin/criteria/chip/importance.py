"""CHIP as a Torch-Pruning importance: calibrate on a model's feature maps, then score dependency groups.

`CHIPImportance` hooks a model while it calibrates (see `session`), keeps per-channel sums (`LayerStats`), and
scores a group from the maps chosen by ``feature`` (see `members`), normalised per map and combined over the
group's coupled layers. Given calibration data it calibrates itself, again whenever it is called on a model that
changed since (see `state`), so that Torch-Pruning's iterative and regularising pruners work unchanged. The channel
independence itself is computed in `pfgdf_plugin.criteria.chip.math`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import graph_of
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin._util.validate import integer, one_of
from pfgdf_plugin.criteria.channels import REDUCTIONS, Reduction, reduce_in_tiers
from pfgdf_plugin.criteria.chip.feed import CalibrationData, run_batches
from pfgdf_plugin.criteria.chip.members import Calibrated, Member, group_members, tiers
from pfgdf_plugin.criteria.chip.session import HOOKED_TYPES, CalibrationSession, channels_of
from pfgdf_plugin.criteria.chip.state import StateKey, shapes_of, state_digest
from pfgdf_plugin.criteria.chip.stats import LayerStats, all_reduce_stats

Feature = Literal["input", "output", "norm"]
FEATURES: tuple[str, ...] = ("input", "output", "norm")
"""Which maps carry a group's channels. ``input`` (the paper's): what the layers consuming the channels read, the
post-activation map in conv-norm-act chains and the post-add map in residual stages. ``output``: the raw output of
the layers producing the channels. ``norm``: the output of the group's norm layers."""

Normalization = Literal["mean", "rms", "none"]
NORMALIZATIONS: tuple[str, ...] = ("mean", "rms", "none")


class CHIPImportance(tp.importance.Importance):
    """CHannel Independence-based Pruning (CHIP) as a Torch-Pruning importance, computed exactly and streamed.

    Called with a dependency group, returns one score per channel: the channel's mean channel independence
    ``CI_c`` over the calibration samples (low = nearly a combination of the other channels = pruned first),
    divided by its map's scale, and averaged over the group's coupled layers.

    Calibration, two ways:

    * ``CHIPImportance(calibration=batches)``: the importance calibrates itself on the model it is asked about, and
      again whenever that model has changed since (pruned by an earlier step, trained between two ``regularize()``
      calls). This is what makes it a drop-in for Torch-Pruning's pruners: ``MetaPruner`` with ``iterative_steps >
      1``, ``GroupNormPruner.regularize()``, ``GrowingRegPruner``, ``prune()``. Each recalibration costs the
      forward passes plus the CI of every hooked map (``docs/chip.md`` has measurements).
    * ``with imp.calibrate(model): ...`` (one-shot): run the batches yourself; scoring a model that changed since
      is then an error, as there is nothing to recalibrate with.

    Whether the model changed is checked on every call: the identity, storage, shape and write counter of every
    parameter and buffer (`state.StateKey`, under a millisecond); when those differ (another model object, such as
    the copy ``prune()`` works on, or an in-place write), a digest of the state dict's values decides. Writes
    through ``tensor.data`` are invisible to PyTorch's write counters: call `forget` after them.

    Which maps carry a group's channels (``feature``):

    * ``"input"`` (default, the paper's map): what the layers *consuming* the channels read: every conv/linear
      whose input channels are in the group, every depthwise conv (its input is its channel), and the model's own
      output when the channels are returned. In conv-norm-activation chains that is the post-activation map; in a
      residual stage it is the post-add map each block reads (averaged over the blocks, once per distinct tensor).
    * ``"output"``: the raw outputs of the layers producing the channels (before norm and activation).
    * ``"norm"``: the outputs of the group's affine norm layers (an error for a group without one).

    Members with a spatial map score a channel first; members that see one position per sample (a pooled vector:
    squeeze-excitation, a classifier) only the channels no spatial member covers; a channel no member covers at all
    (attention queries and keys, read by a matrix product rather than a layer) gets the mean of the group's other
    scores, a neutral rank. A group with no member at all returns ``None`` (Torch-Pruning skips it).

    Scores: per map, the mean CI over samples divided by the mean over the map's channels (``normalization=
    "mean"``), so every map's scores average 1 and one global threshold compares channels with their own layer; the
    order within a map is the raw CI's. ``"rms"`` divides by the root mean square of the channels' row norms
    instead; ``"none"`` keeps the raw mean CI (`layer_ci` gives it in any case).

    Args:
        feature: ``"input"``, ``"output"`` or ``"norm"`` (see above).
        normalization: ``"mean"``, ``"rms"`` or ``"none"``.
        group_reduction: how coupled members' scores combine per channel: ``"mean"``, ``"max"``, ``"min"`` or
            ``"first"``.
        chunk_bytes: float64 working-set size per CI computation (samples of a batch are processed in chunks).
        calibration: calibration data: a ``DataLoader``, an iterable of batches (tensors or ``(images, labels)``
            pairs; a one-shot iterator is read once and kept) or one tensor (one batch). ``None``: calibrate with
            `calibrate` instead.
        calibration_batches: use at most this many batches of ``calibration`` per calibration (``None``: all).

    Raises:
        ValueError: on an unknown option or unusable ``calibration``. When called: without calibration data,
            before calibration or on a model that changed since; on a group whose layers the calibration batches
            never reached (naming them).

    Examples:
        >>> import timm, torch, torch_pruning as tp
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> imp = CHIPImportance(calibration=[torch.randn(4, 3, 64, 64) for _ in range(2)])
        >>> pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 64, 64), importance=imp, pruning_ratio=0.5,
        ...                               iterative_steps=2, ignored_layers=[model.fc])
        >>> for _ in range(2):
        ...     pruner.step()          # the second step scores the half-pruned model: CHIP recalibrates on it
        >>> imp.calibrations, model.layer1[0].conv1.out_channels
        (2, 32)
    """

    def __init__(
        self,
        feature: Feature = "input",
        normalization: Normalization = "mean",
        group_reduction: Reduction = "mean",
        chunk_bytes: int = 1 << 26,
        calibration: object = None,
        calibration_batches: int | None = None,
    ) -> None:
        one_of("feature", feature, FEATURES)
        one_of("normalization", normalization, NORMALIZATIONS)
        one_of("group_reduction", group_reduction, REDUCTIONS)
        self.feature: Feature = feature
        self.normalization: Normalization = normalization
        self.group_reduction: Reduction = group_reduction
        self.chunk_bytes = integer("chunk_bytes", chunk_bytes, 1)
        self._data = None if calibration is None else CalibrationData(calibration, calibration_batches)
        self._cal: Calibrated | None = None
        self._key: StateKey | None = None
        self._digest: str | None = None
        self._verified: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._session: CalibrationSession | None = None
        self.batches = 0
        self.calibrations = 0

    def __repr__(self) -> str:
        data = "" if self._data is None else f", calibration={self._data!r}"
        return (
            f"CHIPImportance(feature={self.feature!r}, normalization={self.normalization!r}, "
            f"group_reduction={self.group_reduction!r}{data})"
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
            >>> tuple(imp.layer_ci("2").shape), imp.stats["2"].samples   # conv "2" reads the ReLU's 8 channels
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
        self.forget()
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
        self.batches = all_reduce_stats(session.stats, session.batches)
        self._cal = Calibrated(session.stats, dict(session.aliases), dict(session.output_of),
                               list(session.unowned_outputs))
        self._key, self._digest = StateKey.of(model), state_digest(model)
        self._verified[model] = self._key
        self.calibrations += 1

    def forget(self) -> None:
        """Drop the calibration: the next call recalibrates (with ``calibration=`` data) or raises."""
        self._cal, self._key, self._digest, self.batches = None, None, None, 0
        self._verified = weakref.WeakKeyDictionary()

    @property
    def stats(self) -> dict[str, LayerStats]:
        """Per stored map (a layer name, or an ``<output k>`` name), its `LayerStats` (empty before calibration)."""
        return dict(self._cal.stats) if self._cal else {}

    def layer_ci(self, name: str) -> torch.Tensor:
        """Raw mean CI per channel of the map stored as ``name`` (float64, unnormalised)."""
        return self._layer(name).mean_ci()

    def layer_scores(self, name: str) -> torch.Tensor:
        """Per channel of the map stored as ``name``, the score groups are built from (normalised as configured)."""
        st = self._layer(name)
        ci = st.mean_ci()
        if self.normalization == "none":
            return ci
        scale = st.rms() if self.normalization == "rms" else float(ci.mean())
        return ci / scale if scale > 0 else torch.zeros_like(ci)

    def _layer(self, name: str) -> LayerStats:
        if self._cal is None:
            raise ValueError(self._not_calibrated())
        if name not in self._cal.stats:
            raise ValueError(f"no layer named {name!r} was hooked during calibration")
        return self._cal.stats[name]

    def _not_calibrated(self) -> str:
        return (
            "CHIPImportance has no calibration data: pass calibration=... (a DataLoader, batches or a tensor), or "
            "run a few batches inside `with imp.calibrate(model): ...` before scoring"
        )

    def is_calibrated_on(self, model: nn.Module) -> bool:
        """Whether the current calibration describes ``model`` as it is now (see the class notes on the check)."""
        if self._cal is None or self._key is None:
            return False
        known = self._verified.get(model)
        if known is not None and known.matches(model):
            return True
        if shapes_of(model) != self._key.shapes() or state_digest(model) != self._digest:
            return False
        self._verified[model] = StateKey.of(model)  # the same state in other tensors (a copy): remember them
        return True

    def _current(self, graph: tp.DependencyGraph) -> Calibrated:
        """The calibration of the graph's model as it is now, recalibrating when there is data to do it."""
        model = getattr(graph, "model", None)
        if model is None or self.is_calibrated_on(model):
            if self._cal is None:
                raise ValueError(self._not_calibrated())
            return self._cal
        if self._data is None:
            if self._cal is None:
                raise ValueError(self._not_calibrated())
            raise ValueError(
                "the model changed since calibration (its weights, buffers or shapes differ); CHIP scores "
                "describe the calibrated model only: calibrate again before pruning, or pass calibration=... so "
                "that the importance recalibrates itself"
            )
        with self.calibrate(model):
            if run_batches(model, self._data) == 0:
                raise ValueError("calibration= yielded no batch: CHIP needs at least one to calibrate")
        assert self._cal is not None
        return self._cal

    def members(self, group: tp.dependency.Group) -> list[Member]:
        """The group's members whose maps score it (see `pfgdf_plugin.criteria.chip.members`)."""
        return group_members(group, self.feature, self._cal or Calibrated())

    def _check(self, members: list[Member], stats: dict[str, LayerStats]) -> None:
        missing = [m.key for m in members if m.key not in stats]
        if missing:
            raise ValueError(f"layer(s) {', '.join(map(repr, missing))} were not hooked during calibration")
        unreached = [m.key for m in members if stats[m.key].samples == 0]
        if unreached:
            raise ValueError(
                f"no calibration data for layer(s) {', '.join(map(repr, unreached))}: the calibration batches "
                "never ran through them, so CHIP cannot score their channels (run batches that reach them, or "
                "pass them to prune(ignored_layers=...))"
            )
        where = "input" if self.feature == "input" else self.feature
        for m in members:
            have = None if m.layer is None else channels_of(m.layer, where)
            if have is not None and have != stats[m.key].channels:
                raise ValueError(
                    f"layer {m.name!r} has {have} channels now but {stats[m.key].channels} when calibrated; "
                    "calibrate again before pruning"
                )

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        if self._session is not None:
            raise RuntimeError("score the model after the calibrate() block has ended")
        cal = self._current(graph_of(group))
        members = group_members(group, self.feature, cal)
        if not members:
            return None
        self._check(members, cal.stats)
        tiered = [(tier, [self.layer_scores(m.key)[list(m.idxs)] for m in tier]) for tier in tiers(members, cal.stats)]
        scores = reduce_in_tiers(group, tiered, self.group_reduction)
        covered = ~scores.isnan()
        if not bool(covered.any()):
            return None
        # Channels no member covers (queries and keys of attention): the group's mean, a neutral rank.
        return torch.where(covered, scores, scores[covered].mean())
