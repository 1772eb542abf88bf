"""Model factory and classifier detection: the only place that knows about timm's conventions."""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn

from pfgdf_plugin._util import validate
from pfgdf_plugin.models.inputs import run_model


def create_model(
    name: str, *, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model with random weights (pretrained weights need the network, which we never assume).

    The arguments are recorded on the model (``pfgdf_create_kwargs``) so that a saved pruned copy can be rebuilt.
    Extra ``kwargs`` go to ``timm.create_model`` (``img_size``, ``drop_rate``, ...).

    Raises:
        ValueError: for an unknown model name (listing the closest timm names), or ``num_classes`` /
            ``in_chans`` below 1.

    Examples:
        >>> create_model("resnet18", num_classes=10).fc.out_features
        10
    """
    available = timm.list_models()
    if name not in available:
        hint = validate.suggest(name, available) or " See timm.list_models() for the names."
        raise ValueError(f"--model / name: unknown timm model {name!r}.{hint}")
    validate.optional_int("num_classes", num_classes, 1)
    validate.optional_int("in_chans", in_chans, 1, 4096)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = timm.create_model(name, pretrained=False, **kwargs)
    model.pfgdf_create_kwargs = dict(kwargs)
    return model


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``(channels, height, width)`` from timm's pretrained config, ``(3, 224, 224)`` otherwise."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return (int(size[0]), int(size[1]), int(size[2]))


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def find_classifier(model: nn.Module, example_inputs: torch.Tensor | tuple) -> nn.Module | None:
    """The layer that produces the model's class scores, which pruning must leave alone.

    Rule, in order: timm's ``model.get_classifier()`` when it returns a module with weights; otherwise the
    last ``nn.Linear`` or conv layer executed in a forward pass of ``example_inputs``. ``None`` if the model
    runs no such layer, or returns several tensors (a ``features_only`` backbone: there, pruning keeps every
    output's shape by leaving alone the groups that would change one).
    """
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module) and _has_weights(head):
            return head
    executed: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: executed.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    try:
        with torch.no_grad():
            out = run_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        return None
    return executed[-1] if executed else None
