"""The dependency graph of one model copy, for :func:`~pfgdf_plugin.pruning.api.prune`.

Build it under a time budget, list its groups one root at a time (a group Torch-Pruning cannot build, or whose
search runs away, is left alone and reported instead of failing the model), score them, apply a plan, check
the result, and find the groups that break a model when pruned.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from tqdm.auto import tqdm

from pfgdf_plugin._compat.torch_pruning import module_name
from pfgdf_plugin._util.budget import BudgetExceeded, checked_calls, time_budget
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.allocation import ScoredGroup
from pfgdf_plugin.allocation.plan import expand_positions, pruned_positions
from pfgdf_plugin.criteria.channels import channel_direction
from pfgdf_plugin.models.layers import WEIGHTED_TYPES, find_gated
from pfgdf_plugin.models.timm import _forward
from pfgdf_plugin.pruning.attention import find_heads, update_heads

Importance = Callable[[tp.dependency.Group], torch.Tensor | None]
Shapes = object  # nested tuples of torch.Size, mirroring the model's output structure

# A single group's dependency search gets this share of the whole graph budget (at least _GROUP_MIN seconds)
# before it is left alone. Measured: the slowest group that finishes takes 0.3 s (EfficientViT-M0, 672 members,
# busy 2-core machine), while a runaway search never finishes (ReXNet, EfficientViT, CoAtNet attention).
_GROUP_SHARE = 120
_GROUP_MIN = 0.5


def _search_hot_spots() -> list[tuple[type, str]]:
    """Methods Torch-Pruning's group search calls on every step: where a runaway search is stopped."""
    from torch_pruning.dependency import group, index_mapping

    spots = [(group.Group, "has_pruning_op"), (group.Group, "add_dep")]
    for name in ("_FlattenIndexMapping", "_ConcatIndexMapping", "_SplitIndexMapping", "_SliceIndexMapping"):
        if hasattr(index_mapping, name):
            spots.append((getattr(index_mapping, name), "__call__"))
    return spots


class GraphTimeoutError(RuntimeError):
    """Torch-Pruning's dependency graph of a model did not finish within ``graph_timeout`` seconds."""


@dataclass
class Traced:
    """A traced model copy: its graph, its scored groups, the groups left alone (name -> why), its output."""

    graph: tp.DependencyGraph
    groups: list[ScoredGroup]
    skipped: dict[str, str] = field(default_factory=dict)
    out_shape: Shapes = None


def shapes_of(out: object) -> Shapes:
    """The shapes of a model output (a tensor, or lists / tuples / dicts of tensors) as nested tuples."""
    if isinstance(out, torch.Tensor):
        return out.shape
    if isinstance(out, dict):
        return tuple((k, shapes_of(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return tuple(shapes_of(v) for v in out)
    return None


def _describe(shapes: Shapes) -> str:
    return str(tuple(shapes)) if isinstance(shapes, torch.Size) else str(shapes)


@contextlib.contextmanager
def outputs_of(model: nn.Module) -> Iterator[list[Shapes]]:
    """Record the output shapes of every forward pass of ``model`` made inside the block.

    The hook also fires inside ``tp.utils.count_ops_and_params``, which runs a deep copy of the model:
    deepcopy shares function objects, so the copy's hook appends to the same list.
    """
    shapes: list[Shapes] = []
    handle = model.register_forward_hook(lambda _m, _i, out: shapes.append(shapes_of(out)))
    try:
        yield shapes
    finally:
        handle.remove()


def input_error(example_inputs: object, err: Exception) -> ValueError:
    shape = tuple(example_inputs.shape) if isinstance(example_inputs, torch.Tensor) else "?"
    return ValueError(f"example_inputs: the model cannot run on an input of shape {shape}: {err}")


def build_graph(
    work: nn.Module, example_inputs: object, *, original: nn.Module, timeout: float | None
) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``work`` within ``timeout`` seconds, or a clear error.

    A failure is diagnosed on ``original``: an input the model itself cannot run is a ``ValueError``.
    """
    try:
        with time_budget(timeout), tolerant_index_mapping():
            dg = tp.DependencyGraph().build_dependency(work, example_inputs=example_inputs)
        _forget_autograd_state(work)
        return dg
    except BudgetExceeded:
        raise _timeout_error(original, timeout, "building") from None
    except Exception as err:
        try:
            with eval_mode(original), torch.no_grad():
                _forward(original, example_inputs)
        except Exception as forward_err:
            raise input_error(example_inputs, forward_err) from forward_err
        raise RuntimeError(f"Torch-Pruning could not build the dependency graph of this model: {err}") from err


@contextlib.contextmanager
def tolerant_index_mapping() -> Iterator[None]:
    """Let Torch-Pruning skip a node whose channel index mapping it cannot compute, instead of failing.

    Torch-Pruning 1.6's ``update_*_index_mapping`` functions slip on some shapes: a concatenation with an input of
    unknown width sums ``None`` (CSP "focus" stems, CoaT, TNT), a reshape next to the model input divides by a
    width of 0 (SHViT). Each such node then gets no index mapping, as the functions already do for the cases they
    recognise; a group that is wrong without it is caught by prune()'s trial on a copy and left alone. (An
    ``IndexError`` in a split's mapping, Gemma-4's ViT, is not tolerated: the graph built past it exhausts memory.)
    """
    from torch_pruning.dependency import index_mapping

    saved = {n: f for n, f in vars(index_mapping).items() if n.startswith("update_") and n != "update_index_mapping"}

    def tolerant(original: Callable[..., None]) -> Callable[..., None]:
        def update(graph: tp.DependencyGraph, node: object) -> None:
            try:
                original(graph, node)
            except (TypeError, ZeroDivisionError):
                pass

        return update

    for name, fn in saved.items():
        setattr(index_mapping, name, tolerant(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(index_mapping, name, fn)


def _forget_autograd_state(model: nn.Module) -> None:
    """Drop what the tracing forward pass (run with autograd) left cached in modules.

    Some blocks cache tensors computed in eval mode (LeViT's attention biases, per device). Cached with
    autograd history they cannot be deep-copied (which MACs counting does), and they would go stale once
    pruning changes the head count, so dict caches are emptied and single tensors detached.
    """
    for m in model.modules():
        for key, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(m, key, value.detach())
            elif isinstance(value, dict) and any(
                isinstance(v, torch.Tensor) and v.grad_fn is not None for v in value.values()
            ):
                value.clear()


def _timeout_error(model: nn.Module, timeout: float | None, stage: str) -> GraphTimeoutError:
    return GraphTimeoutError(
        f"Torch-Pruning's dependency graph of {type(model).__name__} did not finish {stage} within "
        f"graph_timeout={timeout:g} s. Pass the blocks it hangs on in ignored_layers (a CLI user: --ignore), "
        "a smaller example input, or a larger graph_timeout (None waits forever)."
    )


def enumerate_groups(
    graph: tp.DependencyGraph, skip: list[nn.Module], *, model: nn.Module, timeout: float | None
) -> tuple[list[tp.dependency.Group], dict[str, str]]:
    """Every prunable group rooted at a conv / linear layer, in graph order, like Torch-Pruning's
    ``get_all_groups``, but one root at a time: a root whose group cannot be built, or whose search takes more
    than ``timeout / 120`` seconds (at least 0.5 s), is left alone and reported (name -> why) instead of failing
    the model.

    Raises :class:`GraphTimeoutError` when all of them together take longer than ``timeout``.
    """
    deadline = None if timeout is None else time.perf_counter() + timeout
    per_group = None if timeout is None else max(_GROUP_MIN, timeout / _GROUP_SHARE)
    ignored = {id(m) for m in list(skip) + list(graph.IGNORED_LAYERS_IN_TRACING)}
    visited: set[int] = set()
    groups, skipped = [], {}
    spots = _search_hot_spots()
    for m in list(graph.module2node.keys()):
        if id(m) in ignored or id(m) in visited or not isinstance(m, WEIGHTED_TYPES):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        budget = per_group
        if deadline is not None:
            budget = min(per_group, deadline - time.perf_counter())
            if budget <= 0:
                raise _timeout_error(model, timeout, "listing its groups")
        try:
            with checked_calls(budget, spots):
                group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except BudgetExceeded:
            if budget is not None and per_group is not None and budget < per_group:
                raise _timeout_error(model, timeout, "listing its groups") from None
            skipped[module_name(graph, m)] = f"dependency search did not finish within {budget:g} s"
            continue
        except Exception as err:  # Torch-Pruning's index mapping fails on some splits and reshapes
            skipped[module_name(graph, m)] = f"Torch-Pruning could not build its group ({_short(err)})"
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
                prunable = prunable and id(dep.target.module) not in ignored
        if prunable:
            groups.append(group)
    return groups, skipped


def _short(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    scored = []
    for group in tqdm(groups, desc="scoring groups", disable=not progress, file=sys.stderr, leave=False):
        imp = importance(group)
        if imp is None:
            continue
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        layout = heads.get(root)
        if layout is not None and layout.channels == n:
            # q, k and v lose the same heads: `parts` channel groups of `num_heads` blocks of head_dim.
            ch_groups, block = layout.parts, layout.head_dim
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
        ranking = scores
        if rank_by is not None:
            other = rank_by(group)
            if other is not None:
                ranking = _per_unit(other, ch_groups, block)
        members, names = _member_positions(graph, group)
        channel_norm = any(isinstance(dep.target.module, (nn.LayerNorm, nn.GroupNorm)) for dep, _ in group)
        scored.append(
            ScoredGroup(
                root=root,
                root_name=module_name(graph, root),
                handler=group[0].dep.handler,
                channels=n,
                ch_groups=ch_groups,
                scores=scores,
                ranking=torch.argsort(ranking, stable=True),
                member_positions=members,
                member_names=names,
                block=block,
                min_kept=2 if channel_norm else 1,
            )
        )
    return scored


def _per_unit(imp: torch.Tensor, ch_groups: int, block: int) -> torch.Tensor:
    """Channel scores -> one score per unit: averaged over channel groups, then over a unit's channels."""
    imp = imp.detach().to("cpu", torch.float64).reshape(-1)
    if ch_groups > 1:
        imp = imp.view(ch_groups, -1).mean(0)
    return imp.view(-1, block).mean(1) if block > 1 else imp


@dataclass
class Applied:
    """What applying a plan to a model copy did: measured cost, groups Torch-Pruning refused, head changes."""

    macs: float
    params: int
    rejected: list[int]
    heads: list[tuple[str, int, int]]


def apply_plan(
    model: nn.Module,
    graph: tp.DependencyGraph,
    groups: list[ScoredGroup],
    removed: tuple[tuple[int, ...], ...],
    example_inputs: object,
    out_shape: Shapes,
) -> Applied:
    """Prune ``model`` (traced by ``graph``) by ``removed``, fix attention head counts, measure and check it.

    Groups are found in ``model`` by their root's name, so a plan made on one copy applies to another.
    Raises ``RuntimeError`` when pruning fails or the pruned model does not run with the old output shape.
    """
    by_name = dict(model.named_modules())
    names = {m: n for n, m in by_name.items()}
    layouts = find_heads(model)
    rejected = []
    for i, (g, cut) in enumerate(zip(groups, removed, strict=True)):
        if cut and not _prune_group(graph, by_name[g.root_name], cut):
            rejected.append(i)
    changed = update_heads(layouts)
    _sync_linear_sizes(model)
    macs, params = count_and_check(model, example_inputs, out_shape)
    return Applied(macs, params, rejected, [(names[b], before, after) for b, before, after in changed])


def _sync_linear_sizes(model: nn.Module) -> None:
    """Make each linear layer's declared sizes those of its weight.

    When two pruned channels map to the same input of a layer (both halves of a GLU's ``chunk(2)`` reach
    ``fc2``'s input ``p``), Torch-Pruning keeps the right weight columns but subtracts the index count twice from
    ``in_features``. The weight is what the layer computes with; the attribute is only bookkeeping.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = int(m.weight.shape[0]), int(m.weight.shape[1])


def _prune_group(graph: tp.DependencyGraph, root: nn.Module, cut: tuple[int, ...]) -> bool:
    pruning_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, list(cut))
    if not graph.check_pruning_group(pruning_group):
        return False
    pruning_group.prune()
    return True


def count_and_check(model: nn.Module, example_inputs: object, out_shape: Shapes) -> tuple[float, int]:
    """MACs and params of the pruned model; the same forward pass proves it runs with the old output shape."""
    with outputs_of(model) as outputs:
        try:
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
        except Exception as err:
            raise RuntimeError(f"the pruned model no longer runs ({_short(err)})") from err
    if out_shape is not None and outputs and outputs[-1] != out_shape:
        raise RuntimeError(
            f"pruning changed the output shape from {_describe(out_shape)} to {_describe(outputs[-1])}"
        )
    return float(macs), int(params)


def find_inconsistent(
    model: nn.Module,
    example_inputs: object,
    groups: list[ScoredGroup],
    removed: tuple[tuple[int, ...], ...],
    out_shape: Shapes,
    *,
    timeout: float | None,
    progress: bool = False,
) -> dict[int, str]:
    """The groups that break ``model`` when pruned (index -> why), found on copies: ``model`` is untouched.

    Each group is pruned in turn (by its planned cut, or by its lowest-ranked unit when the plan leaves it
    whole, so that later plans are covered too) and the copy is run; a group that raises, or after which the
    copy no longer runs or changes its output shape, is recorded, and the trial restarts on a fresh copy with
    the good groups so far.
    """
    trial = []
    for g, cut in zip(groups, removed, strict=True):
        trial.append(cut if cut else (tuple(expand_positions(g, pruned_positions(g, 1))) if g.units > 1 else ()))
    bad: dict[int, str] = {}
    good: list[int] = []
    pending = [i for i, cut in enumerate(trial) if cut]
    bar = tqdm(total=len(pending), desc="checking groups", disable=not progress, file=sys.stderr, leave=False)
    with eval_mode(model):
        while pending:
            work = copy.deepcopy(model)
            graph = build_graph(work, example_inputs, original=model, timeout=timeout)
            by_name = dict(work.named_modules())
            layouts = find_heads(work)
            for i in good:
                _prune_group(graph, by_name[groups[i].root_name], trial[i])
            update_heads(layouts)
            while pending:
                i = pending.pop(0)
                bar.update(1)
                try:
                    if not _prune_group(graph, by_name[groups[i].root_name], trial[i]):
                        bad[i] = "Torch-Pruning's check refused to prune this group"
                        continue
                    update_heads(layouts)
                    with torch.no_grad():
                        got = shapes_of(_forward(work, example_inputs))
                    if out_shape is not None and got != out_shape:
                        bad[i] = "pruning it changes the shape of a model output"
                        break
                except Exception as err:
                    bad[i] = f"pruning it breaks the model ({_short(err)})"
                    break  # this copy is now inconsistent: start again from a fresh one
                good.append(i)
    bar.close()
    return bad
