"""Pipeline stage 1: automated pruning, one threshold for every group, the result as a report."""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._util import io as _io
from pfgdf_plugin._util import validate as check
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.allocation import CostModel, ScoredGroup, bisect_threshold, make_plan
from pfgdf_plugin.allocation.plan import Plan
from pfgdf_plugin.criteria.pfgdf import PFGDFImportance
from pfgdf_plugin.models.timm import find_classifier
from pfgdf_plugin.pruning import groups as graph
from pfgdf_plugin.pruning.groups import Importance

# The search aims this close to the target so that the measured model lands well inside 1 point.
_SEARCH_TOLERANCE = 0.0025
# A target counts as met within 1 percentage point; up to this many measured corrections try to meet it.
_TARGET_TOLERANCE = 0.01
_MAX_CORRECTIONS = 6
# Rounds of "find the groups that break the model, leave them alone, search again".
_MAX_HEALING_ROUNDS = 3


class TargetOutOfReachError(ValueError):
    """Even pruning every prunable group to ``min_channels`` keeps more than the target (measured).

    Attributes:
        kind: ``"macs"`` or ``"params"``.
        target: the fraction asked for.
        floor: the smallest fraction this model reaches (everything not left alone pruned to the minimum).
    """

    def __init__(self, kind: str, target: float, floor: float, min_channels: int) -> None:
        super().__init__(
            f"target_{kind}={target:g} is out of reach: pruning every prunable group down to "
            f"min_channels={min_channels} still keeps {floor:.1%} of {kind} (the classifier, ignored layers and "
            f"the groups left alone are never pruned). Ask for a fraction of at least {floor:.2f}."
        )
        self.kind, self.target, self.floor = kind, target, floor


@dataclass
class GroupChange:
    """One dependency group: its root layer, the coupled layers, channels before and after."""

    root: str
    layers: list[str]
    channels_before: int
    channels_after: int

    @property
    def kept(self) -> float:
        return self.channels_after / self.channels_before


@dataclass
class LayerChange:
    """One conv or linear layer's channels before and after pruning."""

    name: str
    type: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int


@dataclass
class PruneResult:
    """What :func:`prune` did.

    Attributes:
        model: the pruned model (the input model itself when ``inplace=True``, else a copy).
        alpha: the threshold used: channels whose group score is below it were pruned.
        target: ``("macs" | "params", fraction to keep)`` when a target was searched, else ``None``.
        search_steps: threshold evaluations the search made (0 for a given ``alpha``).
        criterion: the importance that set the per-group counts; ``ranked_by`` the one that chose channels.
        groups: per dependency group, channels before/after (the per-group ratios PFGDF allocated).
        layers: per conv/linear layer, in/out channels before/after.
        ignored: layers left alone, with the reason.
        macs_before, macs_after, params_before, params_after: measured by ``tp.utils.count_ops_and_params``.
        seconds: wall time of the whole call.
        extra: ``stage_seconds`` (prepare, graph_and_scoring, count_before, search, apply_and_verify),
            ``corrections`` (measured re-aims of a target search) and ``target_met``.
    """

    model: nn.Module
    alpha: float
    target: tuple[str, float] | None
    search_steps: int
    criterion: str
    ranked_by: str
    groups: list[GroupChange]
    layers: list[LayerChange]
    ignored: dict[str, str]
    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def macs_kept(self) -> float:
        """Fraction of MACs the pruned model keeps."""
        return self.macs_after / self.macs_before

    @property
    def params_kept(self) -> float:
        """Fraction of parameters the pruned model keeps."""
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-ready values."""
        return {
            "alpha": self.alpha,
            "target": None if self.target is None else {"kind": self.target[0], "keep": self.target[1]},
            "search_steps": self.search_steps,
            "criterion": self.criterion,
            "ranked_by": self.ranked_by,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_kept": self.macs_kept,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_kept": self.params_kept,
            "seconds": self.seconds,
            "groups": [asdict(g) | {"kept": g.kept} for g in self.groups],
            "layers": [asdict(layer) for layer in self.layers],
            "ignored": self.ignored,
            **self.extra,
        }

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _io.write_text(path, text + "\n")
        return text

    def table(self) -> str:
        """A readable per-group table with the totals underneath."""
        width = max([len("group (root layer)")] + [len(g.root) for g in self.groups])
        head = f"{'group (root layer)':<{width}}  {'coupled':>7}  {'channels':>13}  {'kept':>6}"
        lines = [head, "-" * len(head)]
        for g in self.groups:
            chans = f"{g.channels_before} -> {g.channels_after}"
            lines.append(f"{g.root:<{width}}  {len(g.layers):>7}  {chans:>13}  {g.kept:>6.1%}")
        lines.append("-" * len(head))
        target = "" if self.target is None else f" (target: keep {self.target[1]:.1%} of {self.target[0]})"
        lines += [
            f"MACs    {_si(self.macs_before)} -> {_si(self.macs_after)}  ({self.macs_kept:.1%} kept)",
            f"params  {_si(self.params_before)} -> {_si(self.params_after)}  ({self.params_kept:.1%} kept)",
            f"alpha   {self.alpha:.4g}{target}, {self.search_steps} search steps, {self.seconds:.2f} s",
        ]
        if self.ignored:
            lines.append(f"left alone: {', '.join(f'{k} ({v})' for k, v in self.ignored.items())}")
        return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x:.0f}"


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple | list | dict,
    *,
    alpha: float | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    importance: Importance | None = None,
    rank_by: Importance | None = None,
    ignored_layers: Iterable[nn.Module] | None = None,
    classifier: nn.Module | Literal["auto"] | None = "auto",
    round_to: int | None = None,
    min_channels: int = 1,
    inplace: bool = False,
    graph_timeout: float | None = 120.0,
    progress: bool = False,
) -> PruneResult:
    """Prune every dependency group of ``model`` with one threshold, consistently across coupled layers.

    Give exactly one of:

    * ``alpha``: remove exactly the channels whose group score is below ``alpha``. With the default
      :class:`PFGDFImportance` that is the central band ``z < alpha`` of each layer's Gaussian, so every
      group gets its own ratio from its own distribution.
    * ``target_macs`` / ``target_params``: the fraction of MACs / parameters to keep; ``alpha`` is found by
      bisection (on a cost prediction, with one dependency-graph build) and the measured result lands
      within 1 percentage point of the target.

    Attention blocks with a fused ``qkv`` (timm's ViT, DeiT, ...) lose whole heads, the same ones in q, k and
    v, and their ``num_heads`` is updated. A group that Torch-Pruning cannot build, or that breaks the model
    when pruned (found by a trial on a copy), is left alone and listed in ``result.ignored`` with the reason.
    All work happens on copies; ``inplace=True`` finally replays the checked plan on ``model`` itself.

    Args:
        model: any ``nn.Module``; timm models are handled without extra arguments.
        example_inputs: a batch the model accepts (used to trace the graph and count MACs).
        importance: the criterion whose scores the threshold applies to (default ``PFGDFImportance()``).
        rank_by: another criterion that chooses *which* channels go; ``importance`` still decides *how
            many* each group loses (PFGDF's automated per-layer allocation with e.g. L1 or FPGM ranking).
        ignored_layers: layers (and their submodules) whose output channels are never pruned.
        classifier: the output layer to protect; ``"auto"`` finds it (timm's ``get_classifier()``, else the
            last linear/conv layer executed), ``None`` protects nothing extra.
        round_to: keep channel counts at multiples of this (rounding the kept count up).
        min_channels: every group keeps at least this many channels.
        inplace: prune ``model`` itself; otherwise a pruned copy is returned and ``model`` is untouched.
        graph_timeout: seconds Torch-Pruning may spend building the dependency graph and listing its groups
            (``None``: no limit). One group whose search takes more than 1/120 of it (at least 0.5 s) is left alone.
        progress: show a progress bar on stderr.

    Returns:
        A :class:`PruneResult` with the pruned model and the report.

    Raises:
        ValueError: on a bad argument, an input the model cannot run, NaN/Inf weights, a model with nothing
            to prune, or an unreachable target. All checks happen before the model is modified.
        GraphTimeoutError: the dependency graph did not finish within ``graph_timeout``.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> result = prune(model, torch.randn(1, 3, 64, 64), alpha=1.0)
        >>> result.model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
        >>> result.macs_after < result.macs_before
        True
    """
    start = time.perf_counter()
    target = _check_mode(alpha, target_macs, target_params)
    round_to = check.optional_int("round_to", round_to, 1)
    min_channels = check.integer("min_channels", min_channels, 1)
    if graph_timeout is not None:
        graph_timeout = check.positive_float("graph_timeout", graph_timeout)
    importance = PFGDFImportance() if importance is None else importance
    for name, crit in (("importance", importance), ("rank_by", rank_by)):
        if crit is not None and not callable(crit):
            raise ValueError(f"{name} must be a Torch-Pruning Importance (callable on a group), got {crit!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ignored = _check_ignored(model, ignored_layers, classifier)
    check.finite_parameters(model)

    if classifier == "auto":
        with eval_mode(model):
            try:
                head = find_classifier(model, example_inputs)
            except Exception as err:
                raise graph.input_error(example_inputs, err) from err
        if head is not None:
            ignored[head] = "classifier"

    names = {m: n for n, m in model.named_modules()}
    ignored_names = {names[m]: why for m, why in ignored.items()}
    training = {n: m.training for n, m in model.named_modules()}
    marks = {"prepare": time.perf_counter() - start}
    with eval_mode(model), warnings.catch_warnings(), graph.tolerant_index_mapping():
        # Torch-Pruning announces how it prunes bare nn.Parameters (ConvNeXt's gamma); the default is right.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        job = _Job(model, example_inputs, min_channels, round_to, graph_timeout)
        work = copy.deepcopy(model)
        with eval_mode(work):
            traced = graph.trace(work, example_inputs, ignored_names, importance, rank_by,
                                 original=model, timeout=graph_timeout, progress=progress)
        job.out_shape = traced.out_shape
        groups, left_alone = traced.groups, dict(traced.skipped)
        marks["graph_and_scoring"] = time.perf_counter() - start
        cost = CostModel(work, example_inputs, groups)
        before = _layer_channels(work)
        marks["count_before"] = time.perf_counter() - start

        threshold, steps = job.search(cost, groups, target, alpha)
        marks["search"] = time.perf_counter() - start

        # ---- first modification: of the traced copy ----
        plan = make_plan(groups, threshold, min_channels, round_to)
        applied = job.attempt(groups, plan, work, traced.graph)
        trials = 0
        while True:
            if isinstance(applied, Exception):
                trials += 1
                if trials > _MAX_HEALING_ROUNDS:
                    break
                # Some group cannot be pruned consistently: find which on copies, leave it alone, search again.
                bad = graph.find_inconsistent(model, example_inputs, groups, plan.removed, job.out_shape,
                                              timeout=graph_timeout, progress=progress)
            elif applied.rejected:
                # Torch-Pruning refused these groups, so the cost prediction counted cuts that never happened.
                bad = {i: "Torch-Pruning's check refused to prune this group" for i in applied.rejected}
            else:
                break
            if not bad:
                raise RuntimeError(
                    f"the pruned model no longer runs ({applied}) and no single group is to blame; pass the "
                    "layers involved in ignored_layers"
                ) from applied
            left_alone.update({groups[i].root_name: why for i, why in bad.items()})
            groups = [g for i, g in enumerate(groups) if i not in bad]
            if not groups:
                raise ValueError(f"model has no prunable layer: every group breaks the model ({bad})")
            cost = cost.subset(groups)
            threshold, more = job.search(cost, groups, target, alpha)
            steps += more
            plan = make_plan(groups, threshold, min_channels, round_to)
            applied = job.attempt(groups, plan)
        if isinstance(applied, Exception):
            raise RuntimeError(f"the pruned model no longer runs ({applied})") from applied
        work = job.model

        corrections = 0
        if target is not None:
            kind, keep = target
            measured = job.kept(applied, cost, kind)
            if threshold >= job.hi and measured > keep + _TARGET_TOLERANCE:
                raise TargetOutOfReachError(kind, keep, measured, min_channels)
            # Overlapping groups (a gate multiplying a concatenation, as in GhostNet) make Torch-Pruning cut
            # some channels twice, which the prediction cannot see. Then search on measurements instead
            # (regula falsi between the best thresholds on either side of the target), each on a fresh copy.
            # Threshold 0 prunes nothing: kept fraction 1.
            points = [(0.0, 1.0), (threshold, measured)]
            while abs(measured - keep) > _TARGET_TOLERANCE and corrections < _MAX_CORRECTIONS:
                corrections += 1
                above = max((p for p in points if p[1] > keep), key=lambda p: p[0])
                below = min((p for p in points if p[1] <= keep), key=lambda p: p[0], default=(job.hi, job.floor))
                t = above[0] + (below[0] - above[0]) * (above[1] - keep) / max(above[1] - below[1], 1e-12)
                fresh_plan = make_plan(groups, t, min_channels, round_to)
                fresh = job.attempt(groups, fresh_plan)
                if isinstance(fresh, Exception):
                    continue
                fresh_measured = job.kept(fresh, cost, kind)
                points.append((t, fresh_measured))
                if abs(fresh_measured - keep) < abs(measured - keep):
                    work, plan, threshold, applied, measured = job.model, fresh_plan, t, fresh, fresh_measured
            if abs(measured - keep) > _TARGET_TOLERANCE:
                warnings.warn(
                    f"prune(): measured {kind} kept {measured:.1%} misses target {keep:.1%} by more than "
                    f"{_TARGET_TOLERANCE:.0%} (overlapping groups in this architecture)",
                    stacklevel=2,
                )
        if inplace:
            # Replay the plan that worked on a copy; the same graph and plan give the same model.
            final = job.attempt(groups, plan, model)
            if isinstance(final, Exception):
                raise RuntimeError(f"replaying the checked plan on model failed ({final})") from final
            work, applied = model, final
        marks["apply_and_verify"] = time.perf_counter() - start

    for n, m in work.named_modules():  # copies were made in eval mode: give back the caller's modes
        m.training = training.get(n, m.training)
    after = _layer_channels(work)
    return PruneResult(
        model=work,
        alpha=threshold,
        target=target,
        search_steps=steps,
        criterion=repr(importance),
        ranked_by=repr(rank_by if rank_by is not None else importance),
        groups=[
            GroupChange(g.root_name, g.member_names, g.channels, g.channels - len(cut))
            for g, cut in zip(groups, plan.removed, strict=True)
        ],
        layers=[
            LayerChange(name, kind, c_in, after[name][1], c_out, after[name][2])
            for name, (kind, c_in, c_out) in before.items()
        ],
        ignored={**ignored_names, **left_alone},
        macs_before=cost.base.macs,
        macs_after=applied.macs,
        params_before=int(cost.base.params),
        params_after=applied.params,
        seconds=time.perf_counter() - start,
        extra={
            "stage_seconds": _stages(marks),
            "corrections": corrections,
            "target_met": None if target is None else abs(job.kept(applied, cost, target[0]) - target[1])
            <= _TARGET_TOLERANCE,
            "attention_heads": {name: {"before": b, "after": a} for name, b, a in applied.heads},
        },
    )


class _Job:
    """The parts of one prune() call that repeat: threshold search, and applying a plan to a model copy."""

    def __init__(
        self, model: nn.Module, example_inputs: object, min_channels: int, round_to: int | None,
        timeout: float | None,
    ) -> None:
        self.original, self.example_inputs = model, example_inputs
        self.min_channels, self.round_to, self.timeout = min_channels, round_to, timeout
        self.out_shape: graph.Shapes = None
        self.model: nn.Module = model
        self.hi, self.floor = 0.0, 1.0

    def search(
        self, cost: CostModel, groups: list[ScoredGroup], target: tuple[str, float] | None, alpha: float | None
    ) -> tuple[float, int]:
        """The threshold (and search steps): ``alpha`` itself, or the one the cost model puts at the target."""
        # Channels a criterion cannot score get +inf and are never pruned: the search range ends at the
        # largest finite score.
        finite = [float(g.scores[g.scores.isfinite()].max()) for g in groups if g.scores.isfinite().any()]
        self.hi = max(finite, default=0.0) * (1 + 1e-9) + 1e-9
        if target is None:
            return float(alpha), 0  # type: ignore[arg-type]
        kind, keep = target
        base = getattr(cost.base, kind)

        def kept_at(t: float) -> float:
            return getattr(cost.estimate(make_plan(groups, t, self.min_channels, self.round_to)), kind) / base

        self.floor = kept_at(self.hi)
        if self.floor > keep + _TARGET_TOLERANCE:
            # Out of reach by the prediction; a measurement at the largest threshold has the last word
            # (splits such as MixNet's mixed convs shrink more layers than the prediction sees).
            return self.hi, 1
        found = bisect_threshold(kept_at, keep, self.hi, tolerance=_SEARCH_TOLERANCE)
        return found.threshold, found.steps

    def attempt(
        self, groups: list[ScoredGroup], plan: Plan, model: nn.Module | None = None,
        dg: tp.DependencyGraph | None = None,
    ) -> graph.Applied | Exception:
        """Apply ``plan`` to ``model`` (a fresh copy of the original by default) and check it; the failure is
        returned, not raised, so the caller can heal."""
        work = copy.deepcopy(self.original) if model is None else model
        with eval_mode(work):
            if dg is None:
                dg = graph.build_graph(work, self.example_inputs, original=self.original, timeout=self.timeout)
            try:
                applied = graph.apply_plan(work, dg, groups, plan.removed, self.example_inputs, self.out_shape)
            except Exception as err:  # any failure of pruning or of the pruned model is healed by the caller
                return err
        self.model = work
        return applied

    @staticmethod
    def kept(applied: graph.Applied, cost: CostModel, kind: str) -> float:
        return applied.macs / cost.base.macs if kind == "macs" else applied.params / cost.base.params


def _stages(marks: dict[str, float]) -> dict[str, float]:
    """Cumulative time marks -> seconds spent in each stage."""
    out, last = {}, 0.0
    for name, t in marks.items():
        out[name] = t - last
        last = t
    return out


def _check_mode(
    alpha: float | None, target_macs: float | None, target_params: float | None
) -> tuple[str, float] | None:
    given = [n for n, v in (("alpha", alpha), ("target_macs", target_macs), ("target_params", target_params))
             if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of alpha, target_macs, target_params"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if alpha is not None:
        check.positive_float("alpha", alpha)
        return None
    if target_macs is not None:
        return ("macs", check.fraction("target_macs", target_macs))
    return ("params", check.fraction("target_params", target_params))


def _check_ignored(
    model: nn.Module, ignored_layers: Iterable[nn.Module] | None, classifier: object
) -> dict[nn.Module, str]:
    inside = {id(m) for m in model.modules()}
    ignored: dict[nn.Module, str] = {}
    for layer in ignored_layers or ():
        if not isinstance(layer, nn.Module) or id(layer) not in inside:
            raise ValueError(f"ignored_layers must hold submodules of model; {layer!r} is not one")
        ignored[layer] = "ignored_layers"
    if classifier not in ("auto", None):
        if not isinstance(classifier, nn.Module) or id(classifier) not in inside:
            raise ValueError(f"classifier must be 'auto', None or a submodule of model, got {classifier!r}")
        ignored[classifier] = "classifier"
    return ignored


def _layer_channels(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            layers[name] = (type(m).__name__, m.in_features, m.out_features)
        elif isinstance(m, nn.modules.conv._ConvNd):
            layers[name] = (type(m).__name__, m.in_channels, m.out_channels)
    return layers
