"""``prune()``: every dependency group of a model pruned with one threshold, consistently, as a checked plan."""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn as nn

from pfgdf_plugin._compat.torch_pruning import tolerant_index_mapping
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.allocation import CostModel
from pfgdf_plugin.measure.table import LatencyTable
from pfgdf_plugin.pruning.apply import Applied
from pfgdf_plugin.pruning.checks import Settings, check_group_sizes, check_settings, protected_layers
from pfgdf_plugin.pruning.errors import GraphTimeoutError, TargetOutOfReachError
from pfgdf_plugin.pruning.groups import Importance, trace
from pfgdf_plugin.pruning.result import GroupChange, LayerChange, PruneResult
from pfgdf_plugin.pruning.search import PlanSearch
from pfgdf_plugin.pruning.speed import LatencySearch

__all__ = ["GraphTimeoutError", "GroupChange", "LayerChange", "PruneResult", "TargetOutOfReachError", "prune"]


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple | list | dict,
    *,
    alpha: float | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    target_speedup: float | None = None,
    target_latency_ms: float | None = None,
    threads: int = 1,
    latency_table: str | os.PathLike | LatencyTable | None = None,
    insist_table: bool = False,
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
      `PFGDFImportance` that is the central band ``z < alpha`` of each layer's Gaussian, so every
      group gets its own ratio from its own distribution.
    * ``target_macs`` / ``target_params``: the fraction of MACs / parameters to keep; ``alpha`` is found by
      bisection (on a cost prediction, with one dependency-graph build) and the measured result lands
      within 1 percentage point of the target.
    * ``target_speedup`` / ``target_latency_ms``: a measured speed on ONNX Runtime's CPU provider at ``threads``
      intra-op threads. The threshold is searched on a latency table (each conv, linear and attention operator
      measured at its real input shape over a grid of channel counts; built here and cached, or ``latency_table``
      from the deployment device, see ``pfgdf_plugin.device_probe``); channel counts stay at the table's step
      (ONNX Runtime's channel block) unless ``round_to`` is given. With a table of this machine the exported model
      is then timed against the unpruned one and the search re-aimed until the measured speed-up is within 3%;
      ``result.latency`` holds both figures. A device's table gives a predicted speed-up only.

    Attention blocks with a fused ``qkv`` lose head dimensions (one position of every head, in q, k and v:
    timm's ``Attention`` in ViT, DeiT, ...) or whole heads (other blocks; see ``pfgdf_plugin.pruning.attention``),
    and ``head_dim`` or ``num_heads`` is updated. A group that Torch-Pruning cannot build, or that breaks the model
    when pruned (found by a trial on a copy), is left alone and listed in ``result.ignored`` with the reason.
    All work happens on copies; ``inplace=True`` finally replays the checked plan on ``model`` itself.

    Args:
        model: any ``nn.Module``; timm models are handled without extra arguments.
        example_inputs: a batch the model accepts (used to trace the graph and count MACs).
        importance: the criterion whose scores the threshold applies to (default ``PFGDFImportance()``).
        rank_by: another criterion that chooses *which* channels go; ``importance`` still decides *how
            many* each group loses (PFGDF's automated per-layer allocation with e.g. L1 or FPGM ranking).
        threads: intra-op threads of the runtime a latency target is for (1: one edge core).
        latency_table: a latency table (`.json` from ``python -m pfgdf_plugin.device_probe``, or a
            `pfgdf_plugin.measure.table.LatencyTable`); ``None`` measures this machine's.
        insist_table: use a table measured for another runtime (CPU, ONNX Runtime version, threads) anyway.
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
        A `PruneResult` with the pruned model and the report.

    Raises:
        ValueError: on a bad argument, an input the model cannot run, NaN/Inf weights, a model with nothing
            to prune, or an unreachable target (`TargetOutOfReachError`, with the best reachable); a latency
            table that is corrupt, lacks this model's operators or describes another runtime
            (`pfgdf_plugin.measure.table.TableError`). All checks happen before the model is modified.
        GraphTimeoutError: the dependency graph did not finish within ``graph_timeout``.

    Examples:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18", num_classes=10)
        >>> result = prune(model, torch.randn(1, 3, 64, 64), alpha=1.0)
        >>> result.model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
        >>> result.macs_after < result.macs_before
        True
    """
    start = time.perf_counter()
    settings = check_settings(alpha=alpha, target_macs=target_macs, target_params=target_params,
                              importance=importance, rank_by=rank_by, round_to=round_to,
                              min_channels=min_channels, graph_timeout=graph_timeout, target_speedup=target_speedup,
                              target_latency_ms=target_latency_ms, threads=threads, latency_table=latency_table,
                              insist_table=insist_table)
    protected = protected_layers(model, example_inputs, ignored_layers, classifier)
    names = {m: n for n, m in model.named_modules()}
    ignored_names = {names[m]: why for m, why in protected.items()}
    training = {n: m.training for n, m in model.named_modules()}
    marks = {"prepare": time.perf_counter() - start}
    with eval_mode(model), warnings.catch_warnings(), tolerant_index_mapping():
        # Torch-Pruning announces how it prunes bare nn.Parameters (ConvNeXt's gamma); the default is right.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        work = _copy_with_gradients(model)
        with eval_mode(work):
            traced = trace(work, example_inputs, ignored_names, settings.importance, settings.rank_by,
                           original=model, timeout=settings.graph_timeout, progress=progress)
        marks["graph_and_scoring"] = time.perf_counter() - start
        cost = CostModel(work, example_inputs, traced.groups)
        before = _layer_channels(work)
        marks["count_before"] = time.perf_counter() - start
        speed = None
        if settings.latency is not None:
            speed = LatencySearch.prepare(work, model, example_inputs, settings.latency, progress=progress)
            cost = cost.with_latency(speed.predictor)
            settings = speed.settings(settings, cost)
            marks["latency_table"] = time.perf_counter() - start
        check_group_sizes(settings, [g.channels for g in traced.groups])
        run = PlanSearch(model, example_inputs, settings, traced.groups, cost, traced.out_shape, progress=progress)
        run.left_alone.update(traced.skipped)
        run.search()
        marks["search"] = time.perf_counter() - start
        run.apply_and_heal(work, traced.graph)  # the first modification: of the traced copy
        del traced  # its graph and trace are done with: measured corrections build their own
        if speed is not None:
            speed.meet(run, example_inputs)  # type: ignore[arg-type]
        else:
            run.meet_target()
        if inplace:
            # Replay the plan that worked on a copy; the same graph and plan give the same model.
            final = run.attempt(run.plan, model)
            if isinstance(final, Exception):
                raise RuntimeError(f"replaying the checked plan on model failed ({final})") from final
            run.applied = final
        marks["apply_and_verify"] = time.perf_counter() - start
    for n, m in run.model.named_modules():  # copies were made in eval mode: give back the caller's modes
        m.training = training.get(n, m.training)
    return _result(run, settings, before, {**ignored_names, **run.left_alone}, start, marks, speed)


def _copy_with_gradients(model: nn.Module) -> nn.Module:
    """A deep copy that keeps each parameter's ``.grad``: gradient criteria (Taylor) score on the copy."""
    work = copy.deepcopy(model)
    for theirs, ours in zip(model.parameters(), work.parameters(), strict=True):
        if theirs.grad is not None:
            ours.grad = theirs.grad.detach().clone()
    return work


def _result(
    run: PlanSearch, settings: Settings, before: dict[str, tuple[str, int, int]], ignored: dict[str, str],
    start: float, marks: dict[str, float], speed: LatencySearch | None = None,
) -> PruneResult:
    applied, after = run.applied, _layer_channels(run.model)
    assert isinstance(applied, Applied)
    return PruneResult(
        model=run.model,
        alpha=run.threshold,
        target=settings.target,
        search_steps=run.steps,
        criterion=repr(settings.importance),
        ranked_by=repr(settings.rank_by if settings.rank_by is not None else settings.importance),
        groups=[
            GroupChange(g.root_name, g.member_names, g.channels, g.channels - len(cut))
            for g, cut in zip(run.groups, run.plan.removed, strict=True)
        ],
        layers=[
            LayerChange(name, kind, c_in, after[name][1], c_out, after[name][2])
            for name, (kind, c_in, c_out) in before.items()
        ],
        ignored=ignored,
        macs_before=run.cost.base.macs,
        macs_after=applied.macs,
        params_before=int(run.cost.base.params),
        params_after=applied.params,
        seconds=time.perf_counter() - start,
        extra={
            "stage_seconds": _stages(marks),
            "corrections": run.corrections,
            "filled": run.filled,
            "round_to": settings.round_to,
            "target_met": run.target_met() if speed is None else speed.target_met(),
            "attention_heads": {name: {"before": b, "after": a} for name, b, a in applied.heads},
            "attention_head_dims": {name: {"before": b, "after": a} for name, b, a in applied.head_dims},
        },
        latency=None if speed is None else speed.outcome(run),
    )


def _stages(marks: dict[str, float]) -> dict[str, float]:
    """Cumulative time marks -> seconds spent in each stage."""
    out, last = {}, 0.0
    for name, t in marks.items():
        out[name] = t - last
        last = t
    return out


def _layer_channels(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            layers[name] = (type(m).__name__, m.in_features, m.out_features)
        elif isinstance(m, nn.modules.conv._ConvNd):
            layers[name] = (type(m).__name__, m.in_channels, m.out_channels)
    return layers
