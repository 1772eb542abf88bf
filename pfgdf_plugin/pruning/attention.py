"""Multi-head attention as a unit of pruning: whole heads go, and the block's head count follows.

A fused projection such as timm's ``Attention.qkv`` is one ``nn.Linear`` whose outputs are laid out as
``[parts, heads, head_dim]`` (``parts`` = 3 for q, k, v; 2 for a fused ``kv``). Torch-Pruning's dependency graph
couples those outputs to the output projection correctly, but it neither keeps q, k and v aligned nor knows
that channels come in heads, and the block's forward reshapes with its own ``num_heads``. So prune() treats such
a projection's group as ``parts`` channel groups (the same positions leave q, k and v) of ``heads`` blocks of
``head_dim`` channels (whole heads leave), and `update_heads` rewrites ``num_heads`` (and ``attn_dim``
where the block has one) afterwards. ``head_dim`` and the softmax scale never change, so the kept heads compute
exactly what they computed before.

Examples:
    >>> import timm
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    >>> layout = find_heads(vit)[vit.blocks[0].attn.qkv]
    >>> layout.parts, layout.num_heads, layout.head_dim
    (3, 3, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

# Fused projections by attribute name, with how many tensors (q, k, v) each holds per head.
_FUSED = {"qkv": 3, "kv": 2}
# Attributes holding the total attention width (heads x head_dim) that some blocks keep next to num_heads.
_WIDTH_ATTRS = ("attn_dim", "all_head_dim", "inner_dim")


@dataclass(frozen=True)
class HeadLayout:
    """How a fused attention projection's output channels are laid out.

    Attributes:
        block: the attention module that owns ``num_heads``.
        projection: its fused projection (``nn.Linear`` or 1x1 conv), outputs ``[parts, heads, head_dim]``.
        parts: tensors per head in the projection (3 for qkv, 2 for kv).
        num_heads: heads before pruning.
        head_dim: channels per head per part.
    """

    block: nn.Module
    projection: nn.Module
    parts: int
    num_heads: int
    head_dim: int

    @property
    def channels(self) -> int:
        return self.parts * self.num_heads * self.head_dim


def _out_channels(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1:
        return layer.out_channels
    return None


def find_heads(model: nn.Module) -> dict[nn.Module, HeadLayout]:
    """Every fused attention projection in ``model`` whose layout is unambiguous, keyed by the projection.

    A block qualifies when it has an integer ``num_heads``, a ``qkv`` (or ``kv``) child layer, and that
    layer's outputs are exactly ``parts x num_heads x head_dim`` (``head_dim`` read from the block, or the
    only value that fits).
    """
    found: dict[nn.Module, HeadLayout] = {}
    for block in model.modules():
        heads = getattr(block, "num_heads", None)
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            continue
        for attr, parts in _FUSED.items():
            projection = getattr(block, attr, None)
            out = _out_channels(projection) if isinstance(projection, nn.Module) else None
            if out is None or out % (parts * heads):
                continue
            head_dim = getattr(block, "head_dim", None)
            if not isinstance(head_dim, int):
                head_dim = out // (parts * heads)
            if parts * heads * head_dim == out:
                found[projection] = HeadLayout(block, projection, parts, heads, head_dim)
    return found


def update_heads(layouts: dict[nn.Module, HeadLayout]) -> list[tuple[nn.Module, int, int]]:
    """After pruning, set each block's ``num_heads`` (and total width) from its projection's channels.

    Returns ``(block, heads before, heads after)`` for every block whose head count changed. Raises
    ``RuntimeError`` if a projection no longer holds whole heads (a plan that cut through a head).
    """
    changed = []
    for layout in layouts.values():
        out = _out_channels(layout.projection)
        per_head = layout.parts * layout.head_dim
        if out is None or out % per_head:
            raise RuntimeError(
                f"{type(layout.block).__name__}: projection has {out} outputs, not a whole number of heads of "
                f"{per_head} ({layout.parts} x head_dim {layout.head_dim})"
            )
        heads = out // per_head
        if heads != layout.block.num_heads:
            changed.append((layout.block, layout.block.num_heads, heads))
            layout.block.num_heads = heads
            for attr in _WIDTH_ATTRS:
                if isinstance(getattr(layout.block, attr, None), int):
                    setattr(layout.block, attr, heads * layout.head_dim)
    return changed
