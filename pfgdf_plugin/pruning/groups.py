"""A traced model's prunable dependency groups: listed one root at a time, then scored by the criteria.

A group Torch-Pruning cannot build, or whose search runs away, is left alone and reported instead of failing the
model. Scoring turns a criterion's channel scores into units (channels, whole attention heads, positions shared
by a GLU's halves or a grouped conv's channel groups) that the allocation plans with.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from pfgdf_plugin._compat.torch_pruning import bounded_group_search, group_search, module_name
from pfgdf_plugin._util.budget import BudgetExceeded, DeadlineExceeded
from pfgdf_plugin.allocation import ScoredGroup
from pfgdf_plugin.criteria.channels import channel_direction
from pfgdf_plugin.models.inputs import Shapes, outputs_of
from pfgdf_plugin.models.layers import WEIGHTED_TYPES, find_gated
from pfgdf_plugin.pruning.attention import find_heads
from pfgdf_plugin.pruning.errors import short_error, timeout_error
from pfgdf_plugin.pruning.graph import build_graph
from pfgdf_plugin.pruning.mixed import keep_one_per_part, split_parts

Importance = Callable[[tp.dependency.Group], torch.Tensor | None]
"""A Torch-Pruning importance: one score per channel of a group, or ``None`` for a group it cannot score."""

GROUP_SEARCH_WORK = 2_000_000
"""Work Torch-Pruning's search for one group may do before the group is left alone: channel indices mapped
through splits, concatenations, flattens and slices and checked for duplicates, plus members added
(`bounded_group_search`; each (channel, root channel) pair is expanded once, `covering_search`).

Limits count work, never time, so the plan is the same on every machine; a runaway search takes about 1.4 s to
reach it on the machine of the 2026-12 sweep. Measured (2026-12-02, second sweep): the largest groups that
finish take 0.73 M units (iFormer-T, HieraDet-S) and 0.44 M (EfficientFormerV2-S0); EfficientViT-M0's 42
runaway attention and residual searches take 64 s together. Counting calls instead (the 20,000 steps of version
0.2) let each of those run for a minute and hold gigabytes of indices."""

GROUP_MEMBER_FACTOR = 1.0
"""A group holding more members than this many times the graph's nodes is a runaway search: left alone."""


@dataclass
class Traced:
    """A traced model copy: its graph, its scored groups, the groups left alone (name -> why), its output."""

    graph: tp.DependencyGraph
    groups: list[ScoredGroup]
    skipped: dict[str, str] = field(default_factory=dict)
    out_shape: Shapes = None


def enumerate_groups(
    graph: tp.DependencyGraph, skip: list[nn.Module], *, model: nn.Module, timeout: float | None,
    steps: dict[str, int] | None = None,
) -> tuple[list[tp.dependency.Group], dict[str, str]]:
    """Every prunable group rooted at a conv / linear layer, in graph order, like Torch-Pruning's
    ``get_all_groups``, but one root at a time: a root whose group cannot be built, or whose search takes more
    than `GROUP_SEARCH_WORK` units of work, is left alone and reported (name -> why) instead of failing the model.
    ``steps``, when given, receives each root's search work.

    Raises `GraphTimeoutError` when listing them all takes longer than ``timeout`` seconds (an error, never a
    different plan).
    """
    deadline = None if timeout is None else time.perf_counter() + timeout
    ignored = {id(m) for m in list(skip) + list(graph.IGNORED_LAYERS_IN_TRACING)}
    max_members = int(GROUP_MEMBER_FACTOR * len(graph.module2node)) + 64
    visited: set[int] = set()
    groups, skipped = [], {}
    for m in list(graph.module2node.keys()):
        search = None
        if id(m) in ignored or id(m) in visited or not isinstance(m, WEIGHTED_TYPES):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            raise timeout_error(model, timeout, "listing its groups")
        try:
            with group_search(), bounded_group_search(GROUP_SEARCH_WORK, deadline, max_members) as search:
                group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except DeadlineExceeded:
            raise timeout_error(model, timeout, "listing its groups") from None
        except BudgetExceeded:
            skipped[module_name(graph, m)] = (f"dependency search ran away (over {GROUP_SEARCH_WORK:,} units of "
                                              f"work or {max_members:,} members)")
            continue
        except Exception as err:  # Torch-Pruning's index mapping fails on some splits and reshapes
            skipped[module_name(graph, m)] = f"Torch-Pruning could not build its group ({short_error(err)})"
            continue
        finally:
            if steps is not None and search is not None:
                steps[module_name(graph, m)] = search.calls
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable = prunable and id(dep.target.module) not in ignored
        if prunable:
            groups.append(group)
    return groups, skipped


def trace(
    work: nn.Module,
    example_inputs: object,
    ignored_names: dict[str, str],
    importance: Importance,
    rank_by: Importance | None,
    *,
    original: nn.Module,
    timeout: float | None,
    progress: bool = False,
) -> Traced:
    """Build the dependency graph of ``work`` once and score every prunable group."""
    by_name = dict(work.named_modules())
    ignored = [sub for n in ignored_names for sub in by_name[n].modules()]
    with outputs_of(work) as outputs:
        graph = build_graph(work, example_inputs, original=original, timeout=timeout)
    groups, skipped = enumerate_groups(graph, ignored, model=original, timeout=timeout)
    scored = score_groups(graph, work, groups, importance, rank_by, progress)
    if not scored:
        raise ValueError(
            "model has no prunable layer: every conv/linear layer is ignored, is the classifier, or "
            "belongs to a group the criterion cannot score"
            + (f" (left alone: {', '.join(f'{k} ({v})' for k, v in skipped.items())})" if skipped else "")
        )
    return Traced(graph, scored, skipped, outputs[0] if outputs else None)


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


def score_groups(
    graph: tp.DependencyGraph,
    model: nn.Module,
    groups: list[tp.dependency.Group],
    importance: Importance,
    rank_by: Importance | None,
    progress: bool = False,
) -> list[ScoredGroup]:
    """Score each group; a group the criterion returns ``None`` for is not prunable."""
    out_groups, in_groups = _channel_groups(graph, model)
    heads = find_heads(model)
    gated = find_gated(model)
    parts = split_parts(model)
    scored = []
    for group in tqdm(groups, desc="scoring groups", disable=not progress, file=sys.stderr, leave=False):
        imp = importance(group)
        if imp is None:
            continue
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        _check_scores(imp, importance, module_name(graph, root), n)
        layout = heads.get(root)
        if layout is not None and layout.channels == n:
            # Equal heads, q, k and v aligned: one dimension of every head, or whole heads (attention.py's rule).
            ch_groups, block = layout.ch_groups, layout.unit_channels
        elif root in gated and n % gated[root] == 0:
            ch_groups, block = gated[root], 1  # value and gate halves lose the same positions
        else:
            block = 1
            ch_groups = max(
                [1]
                + [
                    (out_groups if graph.is_out_channel_pruning_fn(dep.handler) else in_groups).get(
                        dep.target.module, 1
                    )
                    for dep, _ in group
                ]
            )
            if n % ch_groups:
                ch_groups = 1
        scores = _per_unit(imp, ch_groups, block)
        order = scores
        if rank_by is not None:
            other = rank_by(group)
            if other is not None:
                _check_scores(other, rank_by, module_name(graph, root), n)
                order = _per_unit(other, ch_groups, block)
        ranking = torch.argsort(order, stable=True)
        members, names = _member_positions(graph, group)
        scores, ranking = keep_one_per_part(scores, ranking, members, parts, block)
        channel_norm = any(isinstance(dep.target.module, (nn.LayerNorm, nn.GroupNorm)) for dep, _ in group)
        scored.append(
            ScoredGroup(
                root=root,
                root_name=module_name(graph, root),
                handler=group[0].dep.handler,
                channels=n,
                ch_groups=ch_groups,
                scores=scores,
                ranking=ranking,
                member_positions=members,
                member_names=names,
                block=block,
                min_kept=2 if channel_norm else 1,
            )
        )
    return scored


def _check_scores(scores: object, importance: object, root: str, n: int) -> None:
    """A criterion's scores for a group of ``n`` channels: ``n`` numbers, none NaN (``+inf``: never pruned)."""
    where = f"importance {importance!r} on the group of {root!r} ({n} channels)"
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{where} returned a {type(scores).__name__}; expected a tensor of {n} scores")
    if scores.numel() != n:
        raise ValueError(f"{where} returned {scores.numel()} scores of shape {tuple(scores.shape)}; expected {n}")
    if torch.isnan(scores).any():
        raise ValueError(f"{where} returned NaN for {int(torch.isnan(scores).sum())} of {n} channels")


def _per_unit(imp: torch.Tensor, ch_groups: int, block: int) -> torch.Tensor:
    """Channel scores -> one score per unit: averaged over channel groups, then over a unit's channels."""
    imp = imp.detach().to("cpu", torch.float64).reshape(-1)
    if ch_groups > 1:
        imp = imp.view(ch_groups, -1).mean(0)
    return imp.view(-1, block).mean(1) if block > 1 else imp
