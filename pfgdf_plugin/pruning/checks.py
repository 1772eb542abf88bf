"""prune()'s arguments, checked before anything is modified: the settings of one call, and the protected layers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from pfgdf_plugin._util import validate
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.criteria.pfgdf import PFGDFImportance
from pfgdf_plugin.models.layers import WEIGHTED_TYPES
from pfgdf_plugin.models.timm import find_classifier
from pfgdf_plugin.pruning.errors import input_error
from pfgdf_plugin.pruning.groups import Importance


@dataclass(frozen=True)
class LatencyGoal:
    """A latency target: ``kind`` ``"speedup"`` (``value`` x faster) or ``"ms"`` (``value`` milliseconds), on
    ONNX Runtime's CPU provider at ``threads`` intra-op threads; ``table`` a latency table given by the caller
    (``None``: measure one here, cached), with ``table_name`` for messages; ``insist`` uses a table measured for
    another runtime anyway."""

    kind: str
    value: float
    threads: int
    table: Any = None
    table_name: str = ""
    insist: bool = False


@dataclass(frozen=True)
class Settings:
    """One prune() call's checked settings.

    Attributes:
        alpha: the threshold given, or ``None`` when a target is searched.
        target: ``("macs" | "params" | "latency", fraction to keep)``, or ``None`` for a given ``alpha``
            (a latency target's fraction is set once its table is known).
        latency: the latency target, or ``None``.
        importance: the criterion whose scores the threshold applies to.
        rank_by: the criterion that chooses which channels go (``None``: ``importance``).
        round_to: kept channel counts are multiples of this (``None``: exact).
        min_channels: every group keeps at least this many channels.
        graph_timeout: seconds for the dependency graph (``None``: no limit).
    """

    alpha: float | None
    target: tuple[str, float] | None
    importance: Importance
    rank_by: Importance | None
    round_to: int | None
    min_channels: int
    graph_timeout: float | None
    latency: LatencyGoal | None = None


def check_settings(
    *,
    alpha: object,
    target_macs: object,
    target_params: object,
    importance: object,
    rank_by: object,
    round_to: object,
    min_channels: object,
    graph_timeout: object,
    target_speedup: object = None,
    target_latency_ms: object = None,
    threads: object = 1,
    latency_table: object = None,
    insist_table: object = False,
) -> Settings:
    """Every scalar argument of prune(), checked; raises ``ValueError`` naming the first bad one."""
    targets = (("alpha", alpha), ("target_macs", target_macs), ("target_params", target_params),
               ("target_speedup", target_speedup), ("target_latency_ms", target_latency_ms))
    given = [n for n, v in targets if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of " + ", ".join(n for n, _ in targets) + (f" (got {', '.join(given)})" if given else "")
        )
    target: tuple[str, float] | None = None
    latency = None
    if alpha is not None:
        alpha = validate.positive_float("alpha", alpha)
    elif target_macs is not None:
        target = ("macs", validate.fraction("target_macs", target_macs))
    elif target_params is not None:
        target = ("params", validate.fraction("target_params", target_params))
    else:
        latency = latency_goal(target_speedup, target_latency_ms, threads, latency_table, insist_table)
        target = ("latency", 1.0)
    if latency is None and latency_table is not None:
        raise ValueError("latency_table is used with target_speedup or target_latency_ms only")
    for name, crit in (("importance", importance), ("rank_by", rank_by)):
        if crit is not None and not callable(crit):
            raise ValueError(f"{name} must be a Torch-Pruning Importance (callable on a group), got {crit!r}")
    return Settings(
        alpha=alpha,  # type: ignore[arg-type]
        target=target,
        importance=PFGDFImportance() if importance is None else importance,  # type: ignore[arg-type]
        rank_by=rank_by,  # type: ignore[arg-type]
        round_to=validate.optional_int("round_to", round_to, 1),
        min_channels=validate.integer("min_channels", min_channels, 1),
        graph_timeout=None if graph_timeout is None else validate.positive_float("graph_timeout", graph_timeout),
        latency=latency,
    )


def latency_goal(target_speedup: object, target_latency_ms: object, threads: object, latency_table: object,
                 insist_table: object) -> LatencyGoal:
    """The checked latency target; a table file is read (JSON, nothing executed) and checked here."""
    from pfgdf_plugin.measure.table import LatencyTable

    if target_speedup is not None:
        kind, value = "speedup", validate.number("target_speedup", target_speedup)
        if not value > 1:
            raise ValueError(f"target_speedup must be a number > 1 (times faster than the unpruned model), got "
                             f"{target_speedup!r}")
    else:
        kind, value = "ms", validate.positive_float("target_latency_ms", target_latency_ms)
    insist = validate.boolean("insist_table", insist_table)
    if latency_table is None:
        from pfgdf_plugin._util.threads import check_threads

        return LatencyGoal(kind, value, check_threads("threads", threads), insist=insist)
    if isinstance(latency_table, LatencyTable):
        table, name = latency_table, "latency_table"
    elif isinstance(latency_table, str | os.PathLike):
        path = validate.input_file("latency_table", latency_table, (".json",))
        table, name = LatencyTable.load(path), str(path)
    else:
        raise ValueError(f"latency_table must be a path to a .json table or a LatencyTable, got {latency_table!r}")
    # A device's table may come from a machine with more cores than this one: threads are checked against it.
    count = validate.integer("threads", threads, 1)
    if count != table.key.threads and not insist:
        raise ValueError(f"threads={count} but {name} was measured with {table.key.threads} thread(s): pass "
                         f"threads={table.key.threads}, or measure a table at {count}")
    return LatencyGoal(kind, value, count, table, name, insist)


def protected_layers(
    model: object, example_inputs: Any, ignored_layers: Iterable[nn.Module] | None, classifier: object
) -> dict[nn.Module, str]:
    """The layers whose output channels stay, with why: ``ignored_layers``, and the classifier (found when
    ``classifier="auto"``). Also checks that ``model`` is a module with finite weights that runs on the input."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
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
    validate.finite_parameters(model)
    check_example_inputs(example_inputs)
    check_initialised(model)
    if classifier == "auto":
        with eval_mode(model):
            try:
                head = find_classifier(model, example_inputs)
            except Exception as err:
                raise input_error(example_inputs, err) from err
        if head is not None:
            ignored[head] = "classifier"
    return ignored


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, dict):
        inputs = list(inputs.values())
    if isinstance(inputs, (list, tuple)):
        return [t for item in inputs for t in _tensors(item)]
    return []


def check_example_inputs(example_inputs: Any) -> None:
    """``example_inputs`` must hold at least one tensor, and no tensor with an empty batch.

    Examples:
        >>> check_example_inputs(torch.zeros(0, 3, 8, 8))
        Traceback (most recent call last):
        ...
        ValueError: example_inputs must hold at least one sample; got a tensor of shape (0, 3, 8, 8)
    """
    tensors = _tensors(example_inputs)
    if not tensors:
        raise validate.bad("example_inputs", "a tensor (or a tuple, list or dict of tensors) the model accepts",
                           type(example_inputs).__name__)
    for t in tensors:
        if t.ndim > 0 and t.shape[0] == 0:
            raise ValueError(f"example_inputs must hold at least one sample; got a tensor of shape {tuple(t.shape)}")


def check_initialised(model: nn.Module) -> None:
    """Refuse a model whose every conv and linear weight is zero: no criterion can rank its channels."""
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHTED_TYPES) and m.weight is not None]
    if weights and all(not bool(w.detach().any()) for w in weights):
        raise ValueError(
            "model: every conv and linear weight is zero (an uninitialised model?); no criterion can rank "
            "channels. Initialise or train it before pruning."
        )


def check_group_sizes(settings: Settings, channels: list[int]) -> None:
    """``round_to`` and ``min_channels`` must leave some group something to prune (raised before any change)."""
    largest = max(channels, default=0)
    if settings.round_to is not None and settings.round_to >= largest:
        raise ValueError(f"round_to={settings.round_to} is at least the largest prunable group ({largest} "
                         "channels): no group could shrink. Use a smaller multiple, e.g. 8 or 16.")
    if settings.min_channels >= largest:
        raise ValueError(f"min_channels={settings.min_channels} is at least the largest prunable group ({largest} "
                         "channels): no group could shrink.")
