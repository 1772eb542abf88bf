"""Split convolutions: a module that splits its input by channels, runs one conv per part, and concatenates.

timm's ``MixedConv2d`` (MixNet, tf_MixNet) runs ``torch.split(x, self.splits, 1)``, one conv per part (each
with its own kernel size), then ``torch.cat``. Torch-Pruning traces the split and the concatenation and prunes
the part convs correctly, but ``splits`` is plain bookkeeping it cannot see: left stale, the next forward pass
asks for the old sizes and fails. And a part whose every channel is pruned leaves a conv with no channels.
This module finds such modules, keeps their ``splits`` in step with their convs, and names, for each part conv,
the channels it holds so a plan can keep at least one of them.

Other blocks split by sizes held in an attribute and do anything with the parts (MambaOut's gated block,
``torch.split(x, self.split_indices, -1)``; InceptionNeXt's token mixer): `traced_sizes` notes, while the
model is traced, which attribute each split read, and `sync_held_split_sizes` writes the part sizes
Torch-Pruning keeps for that split back into it. It also notes the sizes the trace loses that Torch-Pruning's
index mapping needs (`pfgdf_plugin._compat.torch_pruning.ordered_split_mapping`): how many tensors an
``unbind`` returned and each concatenated tensor's width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode

from pfgdf_plugin._compat.torch_pruning import CAT_WIDTHS, UNBIND_PARTS, split_ops

HELD_SIZES = "pfgdf_held_split_sizes"
"""Key of a split's autograd-node ``metadata``: ``(module, attribute name)`` holding its part sizes, or
``(module, (one attribute name per part))``."""

_SPLITS = {torch.split, torch.Tensor.split, torch.Tensor.split_with_sizes}
_UNBINDS = {torch.unbind, torch.Tensor.unbind}
_CATS = {torch.cat, torch.concat, torch.concatenate}


class traced_sizes(TorchFunctionMode):  # lower case: used like a function, `with traced_sizes(model):`
    """A block in which, in its autograd node's ``metadata``, every ``torch.split`` by a list or tuple that is
    an attribute of the module running it notes ``(module, attribute)``, every ``unbind`` how many tensors it
    returned, and every ``torch.cat`` its inputs' widths along the concatenated dimension.

    Examples:
        >>> class Gated(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc, self.sizes = nn.Linear(4, 6), (4, 2)
        ...     def forward(self, x):
        ...         a, b = torch.split(self.fc(x), self.sizes, dim=-1)
        ...         return a.sum(-1) + b.sum(-1)
        >>> net = Gated()
        >>> with traced_sizes(net):
        ...     out = net(torch.randn(1, 4))
        >>> out.grad_fn.next_functions[0][0].next_functions[0][0].metadata[HELD_SIZES] == (net, "sizes")
        True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.running, self._hooks = model, [], []

    def __enter__(self) -> traced_sizes:
        def enter(module: nn.Module, _inp: object) -> None:
            self.running.append(module)

        def leave(_module: nn.Module, _inp: object, _out: object) -> None:
            self.running.pop()  # a hook returns None: its output stays the module's

        for m in self.model.modules():
            self._hooks.append(m.register_forward_pre_hook(enter))
            self._hooks.append(m.register_forward_hook(leave))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)

    def __torch_function__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        node = getattr(out[0] if isinstance(out, tuple | list) and out else out, "grad_fn", None)
        if node is None:
            return out
        if func in _UNBINDS:
            node.metadata[UNBIND_PARTS] = len(out)
            return out
        if func in _CATS and args and isinstance(args[0], tuple | list):
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            node.metadata[CAT_WIDTHS] = [int(t.shape[dim]) for t in args[0]]
            return out
        sizes = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_sizes"))
        if func in _SPLITS and isinstance(sizes, list | tuple) and self.running and isinstance(out, tuple | list):
            holder = self.running[-1]
            name = next((n for n, v in vars(holder).items() if v is sizes), None) or _int_attributes(holder, sizes)
            if name is not None:
                node.metadata[HELD_SIZES] = (holder, name)
        return out


def _int_attributes(module: nn.Module, sizes: list | tuple) -> tuple[str, ...] | None:
    """The attributes a list built in ``forward`` was made of (FasterNet's ``[self.dim_conv3, self.dim_untouched]``):
    for each size, the one integer attribute equal to it; ``None`` unless every size has exactly one, all different."""
    ints = {n: v for n, v in vars(module).items() if isinstance(v, int) and not isinstance(v, bool)}
    names = []
    for size in sizes:
        found = [n for n, v in ints.items() if v == size]
        if len(found) != 1 or found[0] in names:
            return None
        names.append(found[0])
    return tuple(names)


def sync_held_split_sizes(graph: tp.DependencyGraph) -> None:
    """Write each traced split's current part sizes into the attribute its module reads them from (as a tuple or
    a list, like the attribute was), or into the integer attributes it builds the list from; splits
    `traced_sizes` noted nothing for are left alone."""
    for sizes, metadata in split_ops(graph):
        held = metadata.get(HELD_SIZES)
        if held is None:
            continue
        module, name = held
        if isinstance(name, tuple):
            for attr, size in zip(name, sizes, strict=True):
                setattr(module, attr, int(size))
            continue
        old = getattr(module, name)
        if [int(s) for s in sizes] != list(old):
            setattr(module, name, type(old)(int(s) for s in sizes))


def find_split_convs(model: nn.Module) -> dict[nn.Module, list[nn.Conv2d]]:
    """Modules that split their input by ``splits`` (a list of channel counts, one per child conv).

    Returns ``{module: [part convs in order]}`` for every module with an integer list ``splits`` and exactly one
    conv child per entry (timm's ``MixedConv2d``). The entries are not compared with the convs' input channels:
    right after Torch-Pruning prunes the convs they differ, and that is when ``sync_split_sizes`` needs them.

    Examples:
        >>> from timm.layers import MixedConv2d
        >>> mixed = MixedConv2d(12, 12, kernel_size=[3, 5, 7], depthwise=True)
        >>> [c.kernel_size[0] for c in find_split_convs(nn.Sequential(mixed))[mixed]]
        [3, 5, 7]
    """
    found: dict[nn.Module, list[nn.Conv2d]] = {}
    for m in model.modules():
        splits = getattr(m, "splits", None)
        if not isinstance(splits, list | tuple) or not all(isinstance(s, int) for s in splits):
            continue
        parts = list(m.children())
        if len(parts) == len(splits) and all(isinstance(c, nn.Conv2d) for c in parts):
            found[m] = parts
    return found


def sync_split_sizes(split_convs: dict[nn.Module, list[nn.Conv2d]]) -> None:
    """Make each split module's ``splits`` (and its ``in_channels`` / ``out_channels``, where it has them) the
    channel counts its part convs now have.

    Examples:
        >>> from timm.layers import MixedConv2d
        >>> mixed = MixedConv2d(8, 8, kernel_size=[3, 5])
        >>> found = find_split_convs(mixed)
        >>> mixed["1"] = nn.Conv2d(2, 3, 5, padding=2)  # as if pruned from 4 to 2 inputs, 4 to 3 outputs
        >>> found[mixed][1] = mixed["1"]
        >>> sync_split_sizes(found)
        >>> mixed.splits, mixed.in_channels, mixed.out_channels
        ([4, 2], 6, 7)
    """
    for m, parts in split_convs.items():
        m.splits = [int(c.weight.shape[1] * c.groups) for c in parts]
        for c in parts:
            c.in_channels = int(c.weight.shape[1] * c.groups)
        if hasattr(m, "in_channels"):
            m.in_channels = sum(m.splits)
        if hasattr(m, "out_channels"):
            m.out_channels = sum(int(c.weight.shape[0]) for c in parts)


def split_parts(model: nn.Module) -> set[nn.Module]:
    """The part convs of every split module: each must keep at least one input and one output channel.

    Examples:
        >>> from timm.layers import MixedConv2d
        >>> len(split_parts(nn.Sequential(MixedConv2d(8, 8, kernel_size=[3, 5]), nn.Conv2d(8, 8, 1))))
        2
    """
    return {c for parts in find_split_convs(model).values() for c in parts}


def keep_one_per_part(
    scores: torch.Tensor, ranking: torch.Tensor, members: list[tuple[nn.Module, str, torch.Tensor]],
    parts: set[nn.Module], block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's unit scores and ranking with, for each split part conv among its ``members``, the part's
    last-ranked unit made unprunable (score ``+inf``, ranked last): a part losing every channel would leave a conv
    with no channels.

    ``members`` are ``(module, direction, group positions)``; ``block`` is channels per unit within a channel
    group. A part holding every unit of the group needs nothing: a group always keeps a unit. Returns new tensors;
    a group without such a part comes back unchanged.

    Examples:
        >>> conv = nn.Conv2d(4, 2, 1)
        >>> scores, ranking = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.arange(4)
        >>> s, r = keep_one_per_part(scores, ranking, [(conv, "in", torch.tensor([0, 1]))], {conv}, 1)
        >>> s.tolist(), r.tolist()
        ([1.0, inf, 3.0, 4.0], [0, 2, 3, 1])
    """
    units = scores.numel()
    span = units * block
    rank_of = torch.empty_like(ranking)
    rank_of[ranking] = torch.arange(units)
    keep: set[int] = set()
    for m, _direction, positions in members:
        if m not in parts or positions.numel() == 0:
            continue
        held = {int(p) % span // block for p in positions.tolist()}
        if len(held) < units:
            keep.add(max(held, key=lambda u: int(rank_of[u])))  # the unit the ranking prunes last
    if not keep:
        return scores, ranking
    scores = scores.clone()
    scores[sorted(keep)] = float("inf")
    last = torch.tensor([u in keep for u in ranking.tolist()])
    return scores, torch.cat([ranking[~last], ranking[last]])
