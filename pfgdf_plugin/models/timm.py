"""Model factory and classifier detection: the only place that knows about timm's conventions."""

from __future__ import annotations

import difflib

import timm
import torch
import torch.nn as nn


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None) -> nn.Module:
    """A timm model with random weights (pretrained weights need the network, which we never assume).

    Raises:
        ValueError: for an unknown model name, listing the closest timm names.

    Example:
        >>> create_model("resnet18", num_classes=10).fc.out_features
        10
    """
    available = timm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models() for the names."
        raise ValueError(f"--model / name: unknown timm model {name!r}.{hint}")
    kwargs: dict[str, int] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    return timm.create_model(name, pretrained=False, **kwargs)


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
            out = _forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        return None
    return executed[-1] if executed else None


def _forward(model: nn.Module, example_inputs: torch.Tensor | tuple | list | dict) -> object:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)
