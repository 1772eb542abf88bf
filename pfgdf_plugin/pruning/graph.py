"""Torch-Pruning's dependency graph of one model copy, with a clear error when it cannot be built or takes too long."""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat.torch_pruning import release_trace, tolerant_index_mapping
from pfgdf_plugin._util.modes import eval_mode
from pfgdf_plugin.models.attention_scores import hidden_scores
from pfgdf_plugin.models.broadcasts import hidden_broadcasts
from pfgdf_plugin.models.head_dim_forwards import adopt_head_dim_forwards
from pfgdf_plugin.models.inputs import run_model
from pfgdf_plugin.models.token_mixing import find_token_mixing
from pfgdf_plugin.pruning.errors import input_error, timeout_error
from pfgdf_plugin.pruning.mixed import traced_sizes
from pfgdf_plugin.pruning.pruners import customized_pruners


def build_graph(
    work: nn.Module, example_inputs: object, *, original: nn.Module, timeout: float | None
) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``work`` within ``timeout`` seconds, or a clear error.

    A failure is diagnosed on ``original``: an input the model itself cannot run is a ``ValueError``.
    """
    start = time.perf_counter()
    adopt_head_dim_forwards(work)  # traced as the pruned model will run
    try:
        with tolerant_index_mapping(), hidden_scores(), hidden_broadcasts(), traced_sizes(work):
            dg = tp.DependencyGraph().build_dependency(
                work, example_inputs=example_inputs, customized_pruners=customized_pruners(work),
                ignored_layers=find_token_mixing(work, example_inputs),
            )
        forget_autograd_state(work)
        release_trace(dg)
    except Exception as err:
        try:
            with eval_mode(original), torch.no_grad():
                run_model(original, example_inputs)
        except Exception as forward_err:
            raise input_error(example_inputs, forward_err) from forward_err
        raise RuntimeError(f"Torch-Pruning could not build the dependency graph of this model: {err}") from err
    # Checked after the build, not by interrupting it: a slow machine gets an error, never a different graph.
    if timeout is not None and time.perf_counter() - start > timeout:
        raise timeout_error(original, timeout, "building")
    return dg


def forget_autograd_state(model: nn.Module) -> None:
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
