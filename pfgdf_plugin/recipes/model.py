"""The model a recipe names: built from timm or the zoo, or loaded from ``model.checkpoint``, and checked to run."""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import timm
import torch
import torch.nn as nn

from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.models.saved import FORMAT, load_pruned_with_metadata
from pfgdf_plugin.models.timm import create_model
from pfgdf_plugin.recipes.sections import ZOO_MODELS, ModelSpec


def load_model(spec: ModelSpec, num_classes: int, in_chans: int) -> tuple[nn.Module, str]:
    """The model to prune, and where it came from (for the log).

    A ``save_pruned`` file is loaded as saved (pickled files only with ``model.trust_pickle``); a ``state_dict``
    checkpoint is loaded into the named model.

    Raises:
        ValueError: the checkpoint does not fit the model, or ``model.kwargs`` do not fit its constructor.

    Examples:
        >>> model, how = load_model(ModelSpec(name="cifar_resnet20"), num_classes=10, in_chans=3)
        >>> how
        'from scratch'
    """
    state = None
    if spec.checkpoint:
        try:
            state = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            state = None  # pickled objects: only a trusted save_pruned file of pfgdf-plugin 0.1 may be one
        except Exception as err:
            raise ValueError(f"recipe: model.checkpoint: cannot read {spec.checkpoint!r}: {err}") from err
        if state is None or (isinstance(state, dict) and state.get("format") == FORMAT):
            try:
                model, _ = load_pruned_with_metadata(spec.checkpoint, trust_pickle=spec.trust_pickle)
            except ValueError as err:
                raise ValueError(f"recipe: model.checkpoint: {err}".replace("(CLI: --trust-pickle)",
                                 "(recipe: model.trust_pickle: true)")) from err
            return model, f"from {spec.checkpoint}"
    model = _build(spec, num_classes, in_chans)
    if not spec.checkpoint:
        return model, "from scratch"
    _load_state(model, spec, state, num_classes, in_chans)
    return model, f"from the weights in {spec.checkpoint}"


def _build(spec: ModelSpec, num_classes: int, in_chans: int) -> nn.Module:
    try:
        if spec.name in ZOO_MODELS:
            return ZOO_MODELS[spec.name](num_classes=num_classes, in_chans=in_chans, **spec.kwargs)
        if spec.kwargs:
            return timm.create_model(spec.name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                     **spec.kwargs)
        return create_model(spec.name, num_classes=num_classes, in_chans=in_chans)
    except Exception as err:  # a keyword the constructor does not take (TypeError), or a value it cannot use
        if not spec.kwargs and not isinstance(err, TypeError):
            raise
        raise ValueError(f"recipe: model.kwargs {spec.kwargs} do not fit {spec.name!r}: {err}") from err


def check_buildable(spec: ModelSpec, num_classes: int, in_chans: int) -> None:
    """Build the model of ``spec`` on PyTorch's meta device (shapes only: no memory, no time), so that
    ``model.kwargs`` its constructor does not take fail before any work. A model without kwargs is not built: its
    name was checked when the recipe was read.

    Raises:
        ValueError: ``model.kwargs`` do not fit the constructor (the message names them and the model).

    Examples:
        >>> check_buildable(ModelSpec(name="cifar_resnet20", kwargs={"depth": 32}), num_classes=10, in_chans=3)
        >>> check_buildable(ModelSpec(name="resnet10t", kwargs={"dropout": 0.1}), num_classes=10, in_chans=3)
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: recipe: model.kwargs {'dropout': 0.1} do not fit 'resnet10t': ...unexpected keyword argument...
    """
    if not spec.kwargs:
        return
    try:
        with torch.device("meta"):
            _build(spec, num_classes, in_chans)
    except ValueError as err:
        if not isinstance(err.__cause__, TypeError):
            # Some constructors need real values (e.g. .item() on a schedule tensor): one real build decides.
            _build(spec, num_classes, in_chans)
            return
        raise


def _load_state(model: nn.Module, spec: ModelSpec, state: object, num_classes: int, in_chans: int) -> None:
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):  # timm's / Lightning's wrappers, and recover.finetune's last.pt
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"recipe: model.checkpoint {spec.checkpoint!r} holds no state_dict (a mapping of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"recipe: model.checkpoint {spec.checkpoint!r} does not fit model {spec.name!r} with "
                         f"num_classes={num_classes}, in_chans={in_chans}: {err}") from err


def check_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Run ``model`` on ``x`` (one image) and check it outputs ``(1, classes)`` logits.

    Raises:
        ValueError: the model cannot run on ``x``, or its output is not ``(1, >= num_classes)``.
    """
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ValueError(f"recipe: input_size {tuple(x.shape[1:])}: the model cannot run on it: {err}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"recipe: the model outputs {shape} for one image; a classifier of {num_classes} classes "
                         "must output (1, classes)")


__all__ = ["check_buildable", "check_output", "load_model"]
