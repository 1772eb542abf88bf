"""A pruned model's architecture as plain data, and the model rebuilt from it: nothing is unpickled.

A record names the unpruned architecture (a timm model, a zoo network, or the caller's own) and lists, per
module, the plain attributes (channel counts, head counts, shapes: ints, floats, strings, tuples) that pruning
may have changed. Rebuilding creates the unpruned architecture, sets those attributes, then puts every saved
tensor in place and checks that the names match.

Examples:
    >>> import timm, torch
    >>> net = timm.create_model("resnet10t", num_classes=4)
    >>> record = architecture_record(net)
    >>> record["kind"], record["name"], record["kwargs"]
    ('timm', 'resnet10t', {'num_classes': 4})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from pfgdf_plugin.models.head_dim_forwards import adopt_marked
from pfgdf_plugin.models.layers import sync_linear_sizes
from pfgdf_plugin.models.zoo import ZOO

KINDS: tuple[str, ...] = ("timm", "zoo", "user")
"""``timm``: rebuilt by ``timm.create_model``; ``zoo``: a network of `pfgdf_plugin.models.zoo`; ``user``: the
caller passes the unpruned network (``model=``)."""

# Attribute values a record keeps: JSON scalars, and lists/tuples of them (nested).
_SCALARS = (bool, int, float, str, type(None))


def _plain(value: object, depth: int = 0) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, (list, tuple, torch.Size)) and depth < 3:
        return all(_plain(v, depth + 1) for v in value)
    return False


def architecture_record(model: nn.Module) -> dict[str, Any]:
    """``{"kind", "name", "kwargs"}`` naming the unpruned architecture of ``model``.

    timm models are named by their ``pretrained_cfg["architecture"]`` with ``num_classes`` (and the kwargs
    `pfgdf_plugin.models.create_model` recorded); zoo networks by class name and their ``config``; anything
    else is ``user`` (its class name is kept for the error message).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
        kwargs = dict(getattr(model, "pfgdf_create_kwargs", None) or {})
        if isinstance(getattr(model, "num_classes", None), int):
            kwargs["num_classes"] = model.num_classes
        return {"kind": "timm", "name": cfg["architecture"], "kwargs": kwargs}
    config = getattr(model, "config", None)
    if ZOO.get(type(model).__name__) is type(model) and isinstance(config, dict) and _plain(list(config.values())):
        return {"kind": "zoo", "name": type(model).__name__, "kwargs": dict(config)}
    return {"kind": "user", "name": f"{type(model).__module__}.{type(model).__qualname__}", "kwargs": {}}


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module name, its public plain attributes (what pruning rewrites: channels, heads, shapes)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs = {k: list(v) if isinstance(v, (tuple, torch.Size)) else v for k, v in vars(module).items()
                 if not k.startswith("_") and k != "training" and _plain(v)}
        if attrs:
            out[name] = attrs
    return out


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not) by name: what a rebuilt model needs to compute the same."""
    out = {n: p.detach() for n, p in model.named_parameters()}
    out |= {n: b.detach() for n, b in model.named_buffers()}
    return {n: t.contiguous() for n, t in out.items()}


def build_unpruned(record: dict[str, Any], model: nn.Module | Callable[[], nn.Module] | None) -> nn.Module:
    """The unpruned architecture of ``record``: ``model`` when given (a module, or a function making one)."""
    if model is not None:
        built = model() if callable(model) and not isinstance(model, nn.Module) else model
        if not isinstance(built, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module or a function returning one, got {type(built).__name__}")
        return built
    kind, name, kwargs = record["kind"], record["name"], record["kwargs"]
    if kind == "timm":
        from pfgdf_plugin.models.timm import create_model

        return create_model(name, **kwargs)
    if kind == "zoo":
        if name not in ZOO:
            raise ValueError(f"the file names zoo network {name!r}; known: {', '.join(ZOO)}")
        return ZOO[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    raise ValueError(
        f"the file holds a user-defined architecture ({name}); pass the unpruned network to load it: "
        "load_pruned(path, model=YourNet(...))"
    )


def rebuild(
    unpruned: nn.Module, attributes: dict[str, dict[str, Any]], tensors: dict[str, torch.Tensor]
) -> nn.Module:
    """Give ``unpruned`` the recorded attributes and tensors (in place), then check nothing is missing or extra."""
    modules = dict(unpruned.named_modules())
    for name, attrs in attributes.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(f"the saved model does not fit this architecture: it has a module {name!r} that the "
                             "architecture lacks. Pass the unpruned network it was pruned from as model=.")
        for key, value in attrs.items():
            current = getattr(module, key, None)
            if isinstance(current, (tuple, torch.Size)) and isinstance(value, list):
                value = tuple(value)
            if current != value and not callable(current):
                setattr(module, key, value)
    adopt_marked(unpruned)
    expected = set(tensors_of(unpruned))
    if expected != set(tensors):
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(
            "the saved tensors do not fit this architecture"
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
            + (f"; unexpected: {', '.join(extra[:5])}" if extra else "")
            + ". Pass the unpruned network it was pruned from as model=."
        )
    for full, tensor in tensors.items():
        owner_name, _, leaf = full.rpartition(".")
        owner = modules[owner_name]
        if leaf in owner._parameters:
            old = owner._parameters[leaf]
            owner._parameters[leaf] = nn.Parameter(tensor.clone(), requires_grad=old.requires_grad if old is not None
                                                   else True)
        else:
            owner._buffers[leaf] = tensor.clone()
    sync_linear_sizes(unpruned)
    return unpruned
