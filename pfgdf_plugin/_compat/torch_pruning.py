"""Every use of Torch-Pruning internals (private attributes, index-mapping classes, module-level functions).

Torch-Pruning is pinned ``>=1.5,<1.7`` and 1.6 already reorganised its dependency module: whatever here stops
matching breaks first on an upgrade, and ``tests/test_compat.py`` fails loudly naming it. Public API
(``tp.DependencyGraph``, iterating a ``Group``, ``tp.utils.count_ops_and_params``) is used directly elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils import op_counter

from pfgdf_plugin._util.budget import BudgetExceeded, counted_calls


def graph_of(group: tp.dependency.Group) -> tp.DependencyGraph:
    """The dependency graph a group was built from (``group._DG``)."""
    return group._DG


def module_name(graph: tp.DependencyGraph, layer: object) -> str:
    """The module's dotted name in the traced model (its class name if the graph does not know it)."""
    return graph._module2name.get(layer) or type(layer).__name__


def is_counted(module: nn.Module) -> bool:
    """Whether Torch-Pruning's MACs counter counts ``module`` itself (and so hides its children)."""
    return bool(op_counter.is_supported_instance(module))


def search_hot_spots() -> list[tuple]:
    """Methods Torch-Pruning's group search calls on every step, with the work each call does: where a runaway
    search is stopped. An index mapping's work is the number of channel indices it maps (a flatten or a split
    of a wide tensor maps tens of thousands per call), and so is a duplicate check's (`covering_search` looks each
    index up once); adding a member counts one."""
    from torch_pruning.dependency import group, index_mapping

    def indices(mapping: object, idxs: list, *_args: object, **_kwargs: object) -> int:
        # A forward flatten creates ``stride`` indices per index it maps.
        widen = 1 if getattr(mapping, "reverse", True) else getattr(mapping, "_stride", 1)
        return len(idxs) * widen

    def checked(_group: object, dep: object = None, idxs: list = (), **_kwargs: object) -> int:
        return len(idxs)  # keyword names as Torch-Pruning calls them

    spots: list[tuple] = [(group.Group, "has_pruning_op", checked), (group.Group, "add_dep")]
    for name in ("_FlattenIndexMapping", "_ConcatIndexMapping", "_SplitIndexMapping", "_SliceIndexMapping"):
        if hasattr(index_mapping, name):
            spots.append((getattr(index_mapping, name), "__call__", indices))
    return spots


class _GroupTooLarge:
    """Raise ``BudgetExceeded`` once the group being built holds more than ``limit`` members (``Group._group``)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit

    def __enter__(self) -> _GroupTooLarge:
        from torch_pruning.dependency import group

        self._original = original = group.Group.add_dep
        limit = self.limit

        def add_dep(self_: group.Group, *args: object, **kwargs: object) -> object:
            out = original(self_, *args, **kwargs)
            if limit is not None and len(self_._group) > limit:
                raise BudgetExceeded(f"grew past {limit:,} members")
            return out

        group.Group.add_dep = add_dep
        return self

    def __exit__(self, *_exc: object) -> bool:
        from torch_pruning.dependency import group

        group.Group.add_dep = self._original
        return False


@contextlib.contextmanager
def covering_search() -> Iterator[None]:
    """A block in which Torch-Pruning's group search visits each (channel, root channel) pair of a member once.

    Torch-Pruning 1.6 skips a dependency only when the group already holds it with the *same list* of indices.
    Around a cycle (a residual stream through a flatten, split or concatenation) the same channels come back in
    another order or as another subset, so the search goes round again and again: EfficientViT-B0's,
    InceptionNeXt's and ResNeSt's groups ran for minutes before being left alone. Here a dependency is skipped
    when the group already holds all of its (index, root index) pairs, and a newly mapped index list keeps only
    the pairs the group does not hold yet, so only those travel on. Every index mapping maps each pair on its own,
    so the group reaches exactly the pairs Torch-Pruning's search would reach, wherever that search ends;
    merged, each member channel keeps the first root channel it was reached from, as Torch-Pruning's
    ``add_and_merge`` keeps. (Keyed by channel alone it would be faster still, but a channel reached first from
    the wrong root along a spurious path, q of a fused qkv, would then shadow the right one, v.)
    """
    from torch_pruning.dependency import group

    saved = {name: getattr(group.Group, name) for name in ("add_dep", "has_pruning_op", "add_and_merge")}
    # Ids of the index lists some group holds: such a list is shared (a member's, passed on unmapped, or the
    # search's, passed to the merged group) and never edited; any other list was just made by a mapping.
    held_lists: set[int] = set()

    def held_of(group_: object, dep: object) -> set:
        # Per group, per (member, handler): the (index, root index) pairs it holds.
        held = vars(group_).setdefault("_pfgdf_held", {})
        return held.setdefault((dep.target, dep.handler), set())  # type: ignore[attr-defined]

    def add_dep(self_: object, dep: object, idxs: list) -> object:
        held = held_of(self_, dep)
        if id(idxs) in held_lists:
            held.update(idxs)
        else:  # keep only the pairs not held yet (and hold them)
            idxs[:] = [i for i in idxs if not (i in held or held.add(i))]
        held_lists.add(id(idxs))
        return saved["add_dep"](self_, dep, idxs)

    def has_pruning_op(self_: object, dep: object, idxs: list) -> bool:
        return held_of(self_, dep).issuperset(idxs)

    def add_and_merge(self_: object, dep: object, idxs: list) -> None:
        # Torch-Pruning keeps one root per channel when it merges a member's lists, but takes the first list as
        # it is; the first list here may hold a channel twice (two roots), which its pruners would count twice.
        seen: set[int] = set()
        saved["add_and_merge"](self_, dep, [i for i in idxs if not (i.idx in seen or seen.add(i.idx))])

    patched = {"add_dep": add_dep, "has_pruning_op": has_pruning_op, "add_and_merge": add_and_merge}
    for name, method in patched.items():
        setattr(group.Group, name, method)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(group.Group, name, method)


@contextlib.contextmanager
def group_search() -> Iterator[None]:
    """The block every group is built in: splits mapped part by part (`ordered_split_mapping`) and each
    (member, channel) pair visited once (`covering_search`)."""
    with ordered_split_mapping(), covering_search():
        yield


@contextlib.contextmanager
def bounded_group_search(
    steps: int | None, deadline: float | None = None, members: int | None = None
) -> Iterator[counted_calls]:
    """A block in which Torch-Pruning's group search raises ``BudgetExceeded`` after ``steps`` units of work
    (`search_hot_spots`) or once the group holds more than ``members`` members (``None``: no such limit), and
    ``DeadlineExceeded`` once ``time.perf_counter()`` passes ``deadline``. Both limits count work, so they stop at
    the same place on every machine."""
    with _GroupTooLarge(members), counted_calls(steps, search_hot_spots(), deadline) as counter:
        yield counter


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


def _split_output_numbers(split_node: object) -> list[int] | None:
    """For each consumer of a split node, which of the split's outputs it reads (autograd's ``output_nr``), or
    ``None`` when some consumer reads none or several of them."""
    numbers = []
    for out_node in split_node.outputs:
        grad_fn = getattr(out_node, "grad_fn", None)
        found = {nr for fn, nr in (getattr(grad_fn, "next_functions", None) or ()) if fn is split_node.grad_fn}
        if len(found) != 1:
            return None
        numbers.append(found.pop())
    return numbers


def _map_parts(node: object, numbers: list[int], offsets: list[int]) -> None:
    """Map each consumer of a split-like node (output number ``numbers[i]`` for ``node.outputs[i]``) to its part
    ``offsets[nr : nr + 2]``, in both directions."""
    from torch_pruning.dependency.index_mapping import _SplitIndexMapping

    for out_node, nr in zip(node.outputs, numbers, strict=True):
        for dep in node.dependencies:
            if dep.target is out_node and isinstance(dep.index_mapping[0], _SplitIndexMapping):
                dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[nr: nr + 2], reverse=False)
        for dep in out_node.dependencies:
            if dep.target is node and isinstance(dep.index_mapping[0], _SplitIndexMapping):
                dep.index_mapping[0] = _SplitIndexMapping(offset=offsets[nr: nr + 2], reverse=True)


def _ordered_split_mapping(original: Callable[..., None]) -> Callable[..., None]:
    """``update_split_index_mapping`` with each consumer mapped to the part it reads, at the current part sizes."""
    from torch_pruning import ops

    def update(graph: tp.DependencyGraph, split_node: object) -> None:
        original(graph, split_node)
        sizes = getattr(split_node.module, "split_sizes", None) if split_node.type == ops.OPTYPE.SPLIT else None
        numbers = _split_output_numbers(split_node) if sizes is not None else None
        if numbers is None or max(numbers, default=0) >= len(sizes):
            return
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        _map_parts(split_node, numbers, offsets)

    return update


def split_ops(graph: tp.DependencyGraph) -> list[tuple[list[int], dict]]:
    """Each traced channel split's current part sizes (``_SplitOp.split_sizes``, which Torch-Pruning updates as it
    prunes) and its autograd node's ``metadata``."""
    return [
        (node.module.split_sizes, getattr(node.grad_fn, "metadata", None) or {})
        for node in graph.module2node.values()
        if isinstance(node.module, tp.ops._SplitOp) and node.module.split_sizes is not None
    ]


UNBIND_PARTS = "pfgdf_unbind_parts"
"""Key of an unbind's autograd-node ``metadata``: how many tensors it returned (noted while tracing by
`pfgdf_plugin.pruning.mixed.traced_sizes`)."""

CAT_WIDTHS = "pfgdf_cat_widths"
"""Key of a concatenation's autograd-node ``metadata``: each input's width along the concatenated dimension."""


def _filled_concat_mapping(original: Callable[..., None]) -> Callable[..., None]:
    """``update_concat_index_mapping`` with the input widths noted while tracing where Torch-Pruning cannot infer
    them or infers widths that do not add up to the output's, when the noted ones do (so the concatenation is
    over channels). MambaOut: a split part read directly was inferred as wide as the whole split input."""
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer

    def update(graph: tp.DependencyGraph, node: object) -> None:
        notes = getattr(node.grad_fn, "metadata", None) or {}
        widths = notes.get(CAT_WIDTHS) if node.type == ops.OPTYPE.CONCAT else None
        if widths and len(widths) == len(node.inputs):
            sizes = node.module.concat_sizes or [
                shape_infer.infer_channels_between(graph, n, node) for n in node.inputs
            ]
            out = shape_infer.infer_in_channels_recursively(graph, node, recursive_depth=[0])
            if out is not None and out == sum(widths) and (None in sizes or sum(sizes) != out):
                node.module.concat_sizes = list(widths)  # after pruning, Torch-Pruning's pruner keeps it current
        original(graph, node)

    return update


def _ordered_unbind_mapping(original: Callable[..., None]) -> Callable[..., None]:
    """``update_unbind_index_mapping`` with each consumer mapped to the part it reads, out of all the parts."""
    from torch_pruning import ops
    from torch_pruning.dependency import shape_infer

    def update(graph: tp.DependencyGraph, node: object) -> None:
        original(graph, node)
        if node.type != ops.OPTYPE.UNBIND or getattr(node.grad_fn, "_saved_dim", 0) != 0:
            return
        parts = (getattr(node.grad_fn, "metadata", None) or {}).get(UNBIND_PARTS)
        numbers = _split_output_numbers(node)
        if not parts or numbers is None or max(numbers, default=0) >= parts:
            return
        width = None
        for input_node in node.inputs:
            width = shape_infer.infer_out_channels_recursively(graph, input_node, [0])
            if width is not None:
                break
        if width is None or width % parts:
            return
        offsets = [i * width // parts for i in range(parts + 1)]
        node.module.offsets = offsets
        _map_parts(node, numbers, offsets)

    return update


@contextlib.contextmanager
def ordered_split_mapping() -> Iterator[None]:
    """A block in which Torch-Pruning maps each part of a channel split (``torch.split``, ``chunk``, ``unbind``)
    to the layer that reads that part, at the part's current size.

    Torch-Pruning 1.6 gives a split's i-th part to the i-th consumer in its graph, which is traversal order
    (MixNet's ``MixedConv2d``: part 0 went to the last conv, so pruning a channel removed another part's input
    and left a model that runs but computes something else). It also keeps the part offsets of the trace after
    pruning (its ``SplitPruner`` updates ``split_sizes`` but stores the new offsets on itself), so a second group
    through the same split was mapped to stale positions. Here the part is autograd's output number of the
    consumer's input, and the offsets come from ``split_sizes``; a split whose consumers are not one part each is
    left as Torch-Pruning maps it. An ``unbind`` is cut into as many parts as it returned (noted while tracing),
    not as many as the graph reaches: with attention scores hidden only v is reached of q, k and v. A
    concatenation whose input widths Torch-Pruning cannot infer (a part that went through a permute, MambaOut)
    gets the widths noted while tracing.
    ``get_pruning_group`` refreshes every mapping first, so this applies to every group built inside the block.
    """
    from torch_pruning.dependency import index_mapping

    names = ("update_split_index_mapping", "update_unbind_index_mapping", "update_concat_index_mapping")
    saved = [getattr(index_mapping, n) for n in names]
    wrappers = (_ordered_split_mapping, _ordered_unbind_mapping, _filled_concat_mapping)
    for name, fn, wrap in zip(names, saved, wrappers, strict=True):
        setattr(index_mapping, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in zip(names, saved, strict=True):
            setattr(index_mapping, name, fn)


class _GradFnRecord:
    """What is read from an autograd node after the trace: its ``name()``, its ``_saved_*`` sizes, dims and
    offsets, and (set by `release_trace`) ``next_functions`` as records; never its saved tensors (the
    activations of the tracing forward pass)."""

    next_functions: tuple = ()

    def __init__(self, grad_fn: object) -> None:
        self._name = grad_fn.name()  # type: ignore[attr-defined]
        self.metadata = dict(getattr(grad_fn, "metadata", None) or {})
        for attr in dir(grad_fn):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(grad_fn, attr)
            except Exception:  # a saved value already freed, or one that cannot be unpacked
                continue
            if not _holds_tensor(value):
                setattr(self, attr, value)

    def name(self) -> str:
        return self._name


def _holds_tensor(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value)


def release_trace(graph: tp.DependencyGraph) -> None:
    """Let the tracing forward pass's autograd graph go, keeping what Torch-Pruning reads from it later.

    The graph's nodes (``node.grad_fn``) and its slice / element-wise ops keep the autograd nodes of the trace,
    and with them every activation the forward pass saved for backward: for a ViT at 768 x 768 that is many
    gigabytes, alive as long as the graph is. Pruning with the graph later reads only names and ``_saved_*``
    sizes of those nodes (index mappings, slice offsets), so each is replaced by a record of exactly that.
    """
    records: dict[int, _GradFnRecord] = {}
    originals: list[object] = []  # alive until the records are linked, so no id() is reused meanwhile

    def record(fn: object) -> object:
        if fn is None or isinstance(fn, _GradFnRecord) or not callable(getattr(fn, "name", None)):
            return fn  # element-wise ops may hold the node's name (a str) instead of the node
        if id(fn) not in records:
            originals.append(fn)
            records[id(fn)] = _GradFnRecord(fn)
        return records[id(fn)]

    nodes = list(graph.module2node.values())
    # Which node feeds which (split mappings compare next_functions by identity): linked among records.
    links = [(record(n.grad_fn), getattr(n.grad_fn, "next_functions", None) or ()) for n in nodes]
    for rec, nxt in links:
        if isinstance(rec, _GradFnRecord):
            rec.next_functions = tuple((record(fn), nr) for fn, nr in nxt)
    for node in nodes:
        node.grad_fn = record(node.grad_fn)
        module = node.module
        if isinstance(module, tp.ops._SliceOp):
            module.grad_fn = record(module.grad_fn)
        elif isinstance(module, tp.ops._ElementWiseOp):
            module._grad_fn = record(module._grad_fn)
