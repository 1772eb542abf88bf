"""Pipeline stage 1: automated pruning, one threshold for every group, the result as a report."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from .. import _io
from .. import _validate as check
from ..criteria.channels import channel_direction, module_name
from ..criteria.pfgdf import PFGDFImportance
from ..layers import WEIGHTED_TYPES
from ..models import _forward, find_classifier
from ..search import CostModel, ScoredGroup, bisect_threshold, make_plan

# The search aims this close to the target so that the measured model lands well inside 1 point.
_SEARCH_TOLERANCE = 0.0025
# A target counts as met within 1 percentage point; up to this many measured corrections try to meet it.
_TARGET_TOLERANCE = 0.01
_MAX_CORRECTIONS = 6


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


Importance = Callable[[tp.dependency.Group], torch.Tensor | None]


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
        progress: show a progress bar on stderr.

    Returns:
        A :class:`PruneResult` with the pruned model and the report.

    Raises:
        ValueError: on a bad argument, an input the model cannot run, NaN/Inf weights, a model with nothing
            to prune, or an unreachable target. All checks happen before the model is modified.

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
    importance = PFGDFImportance() if importance is None else importance
    for name, crit in (("importance", importance), ("rank_by", rank_by)):
        if crit is not None and not callable(crit):
            raise ValueError(f"{name} must be a Torch-Pruning Importance (callable on a group), got {crit!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ignored = _check_ignored(model, ignored_layers, classifier)
    check.finite_parameters(model)

    if classifier == "auto":
        with check.eval_mode(model):
            try:
                head = find_classifier(model, example_inputs)
            except Exception as err:
                raise _input_error(example_inputs, err) from err
        if head is not None:
            ignored[head] = "classifier"

    names = {m: n for n, m in model.named_modules()}
    ignored_names = {names[m]: why for m, why in ignored.items()}
    work = model if inplace else copy.deepcopy(model)
    marks = {"prepare": time.perf_counter() - start}
    with check.eval_mode(work), warnings.catch_warnings():
        # Torch-Pruning announces how it prunes bare nn.Parameters (ConvNeXt's gamma); the default is right.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        traced = _trace(work, ignored_names, example_inputs, importance, rank_by, progress, original=model)
        groups = traced.groups
        marks["graph_and_scoring"] = time.perf_counter() - start
        cost = CostModel(work, example_inputs, groups)
        before = _layer_channels(work)
        marks["count_before"] = time.perf_counter() - start

        steps, corrections = 0, 0
        if target is None:
            threshold = float(alpha)  # type: ignore[arg-type]
        else:
            kind, keep = target
            base = getattr(cost.base, kind)

            def kept_at(t: float) -> float:
                return getattr(cost.estimate(make_plan(groups, t, min_channels, round_to)), kind) / base

            hi = max(float(g.scores.max()) for g in groups) * (1 + 1e-9) + 1e-9
            floor = kept_at(hi)
            if floor > keep + _TARGET_TOLERANCE:
                raise ValueError(
                    f"target_{kind}={keep:g} is out of reach: pruning every prunable group down to "
                    f"min_channels={min_channels} still keeps {floor:.1%} of {kind} (the classifier and "
                    "ignored layers are never pruned). Ask for a larger fraction."
                )
            found = bisect_threshold(kept_at, keep, hi, tolerance=_SEARCH_TOLERANCE)
            threshold, steps = found.threshold, found.steps
        marks["search"] = time.perf_counter() - start

        # ---- first modification of `work` (the user's model when inplace=True) ----
        plan = make_plan(groups, threshold, min_channels, round_to)
        _apply(traced.graph, groups, plan)
        macs_after, params_after = _count_and_check(work, example_inputs, traced.out_shape)

        if target is not None:
            kind, keep = target
            measured = (macs_after / cost.base.macs) if kind == "macs" else (params_after / cost.base.params)
            # Overlapping groups (a gate multiplying a concatenation, as in GhostNet) make Torch-Pruning cut
            # some channels twice, which the prediction cannot see. Then search on measurements instead
            # (regula falsi between the best thresholds on either side of the target), each on a fresh copy.
            # Threshold 0 prunes nothing: kept fraction 1.
            points = [(0.0, 1.0), (threshold, measured)]
            while abs(measured - keep) > _TARGET_TOLERANCE and not inplace and corrections < _MAX_CORRECTIONS:
                corrections += 1
                above = max((p for p in points if p[1] > keep), key=lambda p: p[0])
                below = min((p for p in points if p[1] <= keep), key=lambda p: p[0], default=(hi, floor))
                t = above[0] + (below[0] - above[0]) * (above[1] - keep) / max(above[1] - below[1], 1e-12)
                fresh = copy.deepcopy(model)
                retraced = _trace(fresh, ignored_names, example_inputs, importance, rank_by, False, original=model)
                fresh_plan = make_plan(retraced.groups, t, min_channels, round_to)
                _apply(retraced.graph, retraced.groups, fresh_plan)
                fresh_macs, fresh_params = _count_and_check(fresh, example_inputs, retraced.out_shape)
                fresh_measured = fresh_macs / cost.base.macs if kind == "macs" else fresh_params / cost.base.params
                points.append((t, fresh_measured))
                if abs(fresh_measured - keep) < abs(measured - keep):
                    work, groups, plan, threshold = fresh, retraced.groups, fresh_plan, t
                    macs_after, params_after, measured = fresh_macs, fresh_params, fresh_measured
            if abs(measured - keep) > _TARGET_TOLERANCE:
                warnings.warn(
                    f"prune(): measured {kind} kept {measured:.1%} misses target {keep:.1%} by more than "
                    f"{_TARGET_TOLERANCE:.0%} (overlapping groups in this architecture)"
                    + ("; inplace=False lets prune() correct it on a copy" if inplace else ""),
                    stacklevel=2,
                )
        marks["apply_and_verify"] = time.perf_counter() - start

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
        ignored=ignored_names,
        macs_before=cost.base.macs,
        macs_after=float(macs_after),
        params_before=int(cost.base.params),
        params_after=int(params_after),
        seconds=time.perf_counter() - start,
        extra={
            "stage_seconds": _stages(marks),
            "corrections": corrections,
            "target_met": None if target is None else abs(
                (macs_after / cost.base.macs if target[0] == "macs" else params_after / cost.base.params) - target[1]
            ) <= _TARGET_TOLERANCE,
        },
    )


@dataclass
class _Traced:
    graph: tp.DependencyGraph
    groups: list[ScoredGroup]
    out_shape: torch.Size | None


def _trace(
    work: nn.Module,
    ignored_names: dict[str, str],
    example_inputs: object,
    importance: Importance,
    rank_by: Importance | None,
    progress: bool,
    *,
    original: nn.Module,
) -> _Traced:
    """Build the dependency graph of ``work`` once and score every prunable group."""
    by_name = dict(work.named_modules())
    ignored = {by_name[n]: why for n, why in ignored_names.items()}
    with _outputs_of(work) as outputs:
        try:
            graph = tp.DependencyGraph().build_dependency(work, example_inputs=example_inputs)
        except Exception as err:
            _diagnose_graph_failure(original, example_inputs, err)
    groups = _score_groups(graph, work, ignored, importance, rank_by, progress)
    if not groups:
        raise ValueError(
            "model has no prunable layer: every conv/linear layer is ignored, is the classifier, or "
            "belongs to a group the criterion cannot score"
        )
    return _Traced(graph, groups, outputs[0] if outputs else None)


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


def _input_error(example_inputs: object, err: Exception) -> ValueError:
    shape = tuple(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else "?"
    return ValueError(f"example_inputs: the model cannot run on an input of shape {shape}: {err}")


def _diagnose_graph_failure(model: nn.Module, example_inputs: object, err: Exception) -> None:
    """Tell a bad input (the model itself cannot run it) from a graph the tracer cannot build."""
    try:
        with check.eval_mode(model), torch.no_grad():
            _forward(model, example_inputs)
    except Exception as forward_err:
        raise _input_error(example_inputs, forward_err) from forward_err
    raise RuntimeError(f"Torch-Pruning could not build the dependency graph of this model: {err}") from err


@contextlib.contextmanager
def _outputs_of(model: nn.Module) -> Iterator[list[torch.Size]]:
    """Record the output shape of every forward pass of ``model`` made inside the block.

    The hook also fires inside ``tp.utils.count_ops_and_params``, which runs a deep copy of the model:
    deepcopy shares function objects, so the copy's hook appends to the same list.
    """
    shapes: list[torch.Size] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            shapes.append(out.shape)

    handle = model.register_forward_hook(hook)
    try:
        yield shapes
    finally:
        handle.remove()


def _channel_groups(graph: tp.DependencyGraph, model: nn.Module) -> tuple[dict, dict]:
    """Grouped convs (not depthwise) must lose the same positions in every channel group."""
    out_groups: dict[nn.Module, int] = {}
    in_groups: dict[nn.Module, int] = {}
    for m in model.modules():
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels):
            continue
        if pruner.get_in_channel_groups(m) > 1:
            in_groups[m] = pruner.get_in_channel_groups(m)
        if pruner.get_out_channel_groups(m) > 1:
            out_groups[m] = pruner.get_out_channel_groups(m)
    return out_groups, in_groups


def _member_positions(graph: tp.DependencyGraph, group: tp.dependency.Group) -> tuple[list, list[str]]:
    root = list(group[0].idxs)
    position = {r: i for i, r in enumerate(root)}
    members, names, seen = [], [], set()
    for item in group:
        dep, _ = item
        m = dep.target.module
        direction = channel_direction(m, dep.handler, graph)
        if direction is None or item.root_idxs is None or (id(m), direction) in seen:
            continue
        seen.add((id(m), direction))
        pos = [position.get(r, -1) for r in item.root_idxs]
        members.append((m, direction, torch.tensor([p for p in pos if p >= 0], dtype=torch.long)))
        name = module_name(graph, m)
        if name not in names:
            names.append(name)
    return members, names


def _score_groups(
    graph: tp.DependencyGraph,
    model: nn.Module,
    ignored: dict[nn.Module, str],
    importance: Importance,
    rank_by: Importance | None,
    progress: bool,
) -> list[ScoredGroup]:
    out_groups, in_groups = _channel_groups(graph, model)
    skip = [sub for m in ignored for sub in m.modules()]
    scored = []
    all_groups = list(graph.get_all_groups(ignored_layers=skip, root_module_types=list(WEIGHTED_TYPES)))
    for group in tqdm(all_groups, desc="scoring groups", disable=not progress, file=sys.stderr, leave=False):
        imp = importance(group)
        if imp is None:
            continue
        ch_groups = max(
            [1]
            + [
                (out_groups if graph.is_out_channel_pruning_fn(dep.handler) else in_groups).get(dep.target.module, 1)
                for dep, _ in group
            ]
        )
        n = len(group[0].idxs)
        if n % ch_groups:
            ch_groups = 1
        scores = _per_position(imp, ch_groups)
        ranking = scores
        if rank_by is not None:
            other = rank_by(group)
            if other is not None:
                ranking = _per_position(other, ch_groups)
        members, names = _member_positions(graph, group)
        scored.append(
            ScoredGroup(
                root=group[0].dep.target.module,
                root_name=module_name(graph, group[0].dep.target.module),
                handler=group[0].dep.handler,
                channels=n,
                ch_groups=ch_groups,
                scores=scores,
                ranking=torch.argsort(ranking, stable=True),
                member_positions=members,
                member_names=names,
            )
        )
    return scored


def _per_position(imp: torch.Tensor, ch_groups: int) -> torch.Tensor:
    imp = imp.detach().to("cpu", torch.float64).reshape(-1)
    return imp.view(ch_groups, -1).mean(0) if ch_groups > 1 else imp


def _apply(graph: tp.DependencyGraph, groups: list[ScoredGroup], plan) -> None:
    for g, cut in zip(groups, plan.removed, strict=True):
        if not cut:
            continue
        pruning_group = graph.get_pruning_group(g.root, g.handler, list(cut))
        if graph.check_pruning_group(pruning_group):
            pruning_group.prune()


def _count_and_check(model: nn.Module, example_inputs: object, out_shape: torch.Size | None) -> tuple[float, int]:
    """MACs and params of the pruned model; the same forward pass proves it runs with the old output shape."""
    with _outputs_of(model) as outputs:
        try:
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        except Exception as err:
            raise RuntimeError(
                f"the pruned model no longer runs ({err}). A layer of this architecture is not pruned "
                "consistently by the dependency graph; pass it in ignored_layers."
            ) from err
    if out_shape is not None and outputs and outputs[-1] != out_shape:
        raise RuntimeError(f"pruning changed the output shape from {tuple(out_shape)} to {tuple(outputs[-1])}")
    return float(macs), int(params)


def _layer_channels(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            layers[name] = (type(m).__name__, m.in_features, m.out_features)
        elif isinstance(m, nn.modules.conv._ConvNd):
            layers[name] = (type(m).__name__, m.in_channels, m.out_channels)
    return layers
