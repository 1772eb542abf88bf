"""Every use of Torch-Pruning internals (private attributes, index-mapping classes, module-level functions).

Torch-Pruning is pinned ``>=1.5,<1.7`` and 1.6 already reorganised its dependency module: whatever here stops
matching breaks first on an upgrade, and ``tests/test_compat.py`` fails loudly naming it. Public API
(``tp.DependencyGraph``, ``Group``'s iteration, ``tp.utils.count_ops_and_params``) is used directly elsewhere.
"""

from __future__ import annotations

import torch_pruning as tp


def graph_of(group: tp.dependency.Group) -> tp.DependencyGraph:
    """The dependency graph a group was built from (``group._DG``)."""
    return group._DG


def module_name(graph: tp.DependencyGraph, layer: object) -> str:
    """The module's dotted name in the traced model (its class name if the graph does not know it)."""
    return graph._module2name.get(layer) or type(layer).__name__
