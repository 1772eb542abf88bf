"""Healing: find, on fresh copies, the groups that break a model when pruned, so prune() can leave them alone."""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.allocation import ScoredGroup
from pfgdf_plugin.allocation.plan import expand_positions, pruned_positions
from pfgdf_plugin.models.inputs import Shapes, run_model, shapes_of
from pfgdf_plugin.pruning.apply import prune_group
from pfgdf_plugin.pruning.attention import find_heads, update_heads
from pfgdf_plugin.pruning.errors import short_error
from pfgdf_plugin.pruning.graph import build_graph


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
                prune_group(graph, by_name[groups[i].root_name], trial[i])
            update_heads(layouts)
            while pending:
                i = pending.pop(0)
                bar.update(1)
                try:
                    if not prune_group(graph, by_name[groups[i].root_name], trial[i]):
                        bad[i] = "Torch-Pruning's check refused to prune this group"
                        continue
                    update_heads(layouts)
                    with torch.no_grad():
                        got = shapes_of(run_model(work, example_inputs))
                    if out_shape is not None and got != out_shape:
                        bad[i] = "pruning it changes the shape of a model output"
                        break
                except Exception as err:
                    bad[i] = f"pruning it breaks the model ({short_error(err)})"
                    break  # this copy is now inconsistent: start again from a fresh one
                good.append(i)
    bar.close()
    return bad
