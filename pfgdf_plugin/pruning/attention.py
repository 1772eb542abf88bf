"""Multi-head attention as a unit of pruning: whole heads or head dimensions go, and the block follows.

A fused projection such as timm's ``Attention.qkv`` is one ``nn.Linear`` whose outputs are laid out as
``[parts, heads, head_dim]`` (``parts`` = 3 for q, k, v; 2 for a fused ``kv``). Torch-Pruning's dependency graph
couples those outputs to the output projection correctly, but it neither keeps q, k and v aligned nor knows
that channels come in heads, and the block's forward reshapes with its own ``num_heads`` and ``head_dim``. So
prune() treats such a projection's group as equal heads, in one of two units (`HeadLayout.unit`):

* ``"dim"``: one dimension of every head, the same position in q, k and v of every head (``parts x heads``
  channel groups of ``head_dim`` positions). q and k lose the same positions, so the kept dot products are sums
  over the kept dimensions; every head keeps the same ``head_dim``, as the runtime's reshape requires.
* ``"head"``: a whole head, the same one in q, k and v (``parts`` channel groups of ``heads`` blocks of
  ``head_dim`` channels).

The rule, per block and fixed before scoring (so the plan is deterministic): head dimensions when the block's
forward is known to take ``head_dim`` from its attribute (or from the projection's width) with nothing per
dimension in between (timm's own ``Attention``, Swin's ``WindowAttention``, and the blocks that
`pfgdf_plugin.models.head_dim_forwards` re-expresses; without q/k normalisation or gate: a LayerNorm over
``head_dim`` or a rotary embedding would compute something else over fewer dimensions)
*and* dimensions are the finer unit (``head_dim > num_heads``, as in every ViT/DeiT); whole heads otherwise.
One unit per block keeps the allocation unchanged: it plans units.

`update_heads` rewrites ``num_heads`` or ``head_dim`` (and ``attn_dim`` where the block has one) afterwards.
The softmax scale must stay what the model was trained with (``original head_dim ** -0.5``), but timm's fused
path (``F.scaled_dot_product_attention``) ignores ``self.scale`` and divides by ``sqrt(head_dim)`` of the
tensors it gets. So when ``head_dim`` shrinks from ``d`` to ``d'`` the q rows of the projection (weight and
bias) are multiplied by ``sqrt(d' / d)`` and ``scale`` becomes ``d' ** -0.5``: both of timm's paths then compute
exactly the logits the kept dimensions gave before (up to one float rounding of the q weights), and the block
stays a consistent timm block (``scale == head_dim ** -0.5``).

Examples:
    >>> import timm
    >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    >>> layout = find_heads(vit)[vit.blocks[0].attn.qkv]
    >>> layout.parts, layout.num_heads, layout.head_dim, layout.unit
    (3, 3, 64, 'dim')
    >>> layout.ch_groups, layout.unit_channels
    (9, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from pfgdf_plugin.models.head_dim_forwards import adopt_head_dim_forward, class_key, has_head_dim_forward

# Fused projections by attribute name, with how many tensors (q, k, v) each holds per head.
_FUSED = {"qkv": 3, "kv": 2}
# Attributes holding the total attention width (heads x head_dim) that some blocks keep next to num_heads.
_WIDTH_ATTRS = ("attn_dim", "all_head_dim", "inner_dim")
# Blocks whose forward reshapes qkv with (num_heads, head_dim) read from the block, scales q by ``scale`` (or
# lets scaled_dot_product_attention divide by sqrt(head_dim)) and has nothing else per head dimension, so
# they can lose head dimensions. Matched by exact class, never by name alone: a lookalike may hold rotary or
# per-dimension parameters.
_DIM_SAFE = frozenset({
    ("timm.layers.attention", "Attention"),
    # reshape(B_, N, 3, num_heads, -1); a relative-position bias per head and token pair, nothing per dimension
    ("timm.models.swin_transformer", "WindowAttention"),
})
# Blocks that reshape with the input width (C // num_heads) are dim-safe too once given a forward that reads
# head_dim (`pfgdf_plugin.models.head_dim_forwards`), which `update_heads` does when their head_dim shrinks.
# Blocks with a separate v projection reshaped (B, N, num_heads, -1) and read only by attn @ v, the output back
# with -1: v can lose the same dimensions in every head while q and k keep theirs (no attribute to rewrite).
_V_DIM_SAFE = frozenset({
    ("timm.models.tnt", "Attention"),
    ("timm.models.convit", "GPSA"),  # with the forward of `pfgdf_plugin.models.head_dim_forwards`
})
# Submodules that, when present and not an identity, act per head dimension (q/k LayerNorm) or per attention
# channel of the raw input (a gate), so head dimensions cannot go.
_PER_DIM_PARTS = ("q_norm", "k_norm", "gate")


@dataclass(frozen=True)
class HeadLayout:
    """How a fused attention projection's output channels are laid out, and what unit they are pruned in.

    Attributes:
        block: the attention module that owns ``num_heads``.
        projection: its fused projection (``nn.Linear`` or 1x1 conv), outputs ``[parts, heads, head_dim]``.
        parts: tensors per head in the projection (3 for qkv, 2 for kv, 1 for a separate v).
        num_heads: heads before pruning.
        head_dim: channels per head per part before pruning.
        unit: ``"dim"`` (one dimension of every head goes) or ``"head"`` (a whole head goes).
    """

    block: nn.Module
    projection: nn.Module
    parts: int
    num_heads: int
    head_dim: int
    unit: str = "head"

    @property
    def channels(self) -> int:
        return self.parts * self.num_heads * self.head_dim

    @property
    def ch_groups(self) -> int:
        """Channel groups that lose the same positions: every (part, head) for dims, every part for heads."""
        return self.parts * self.num_heads if self.unit == "dim" else self.parts

    @property
    def unit_channels(self) -> int:
        """Channels per unit within a channel group: 1 for dims, ``head_dim`` for whole heads."""
        return 1 if self.unit == "dim" else self.head_dim


def _out_channels(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1:
        return layer.out_channels
    return None


def _unit(block: nn.Module, parts: int, heads: int, head_dim: int) -> str:
    """The documented rule: head dimensions where the block allows them and they are the finer unit."""
    known = class_key(block) in _DIM_SAFE or has_head_dim_forward(block)
    if not known or parts != 3 or head_dim <= heads:
        return "head"
    if getattr(block, "head_dim", head_dim) != head_dim or not isinstance(getattr(block, "scale", None), float):
        return "head"
    for attr in _PER_DIM_PARTS:
        part = getattr(block, attr, None)
        if part is not None and not isinstance(part, nn.Identity):
            return "head"
    return "dim"


def find_heads(model: nn.Module) -> dict[nn.Module, HeadLayout]:
    """Every fused attention projection in ``model`` whose layout is unambiguous, keyed by the projection.

    A block qualifies when it has an integer ``num_heads``, a ``qkv`` (or ``kv``) child layer, and that
    layer's outputs are exactly ``parts x num_heads x head_dim`` (``head_dim`` read from the block, or the
    only value that fits). Its unit follows the module's rule (see the module docstring). A separate ``v``
    projection of a block known to allow it (TNT's, ConViT's GPSA) is a layout of one part that loses head
    dimensions.
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
                unit = _unit(block, parts, heads, head_dim)
                found[projection] = HeadLayout(block, projection, parts, heads, head_dim, unit)
        v = getattr(block, "v", None)
        out = _out_channels(v) if isinstance(v, nn.Module) else None
        if class_key(block) in _V_DIM_SAFE and out and out % heads == 0:
            found[v] = HeadLayout(block, v, 1, heads, out // heads, "dim")
    return found


def _whole(block: nn.Module, out: int | None, per: int, what: str) -> int:
    """``out / per``, or ``RuntimeError`` when the projection no longer holds a whole number of ``what``."""
    if out is None or out % per:
        raise RuntimeError(f"{type(block).__name__}: projection has {out} outputs, not a whole number of {what}")
    return out // per


def update_heads(layouts: dict[nn.Module, HeadLayout]) -> list[tuple[nn.Module, int, int]]:
    """After pruning, set each block's ``num_heads`` or ``head_dim`` (and total width) from its projection.

    Returns ``(block, heads before, heads after)`` for every block whose head count changed (a block that lost
    head dimensions keeps its heads: see `head_dim_changes`). Safe to call again after further pruning. Raises
    ``RuntimeError`` if a projection no longer holds equal heads (a plan that cut through a head).
    """
    changed = []
    for layout in layouts.values():
        out = _out_channels(layout.projection)
        block = layout.block
        if layout.parts == 1:  # a separate v: equal heads is all its block needs
            _whole(block, out, layout.num_heads, f"heads of equal size ({layout.num_heads} heads)")
            continue
        if layout.unit == "dim":
            head_dim = _whole(block, out, layout.parts * layout.num_heads,
                              f"heads of equal size ({layout.parts} x {layout.num_heads} heads)")
            if head_dim != getattr(block, "head_dim", layout.head_dim):
                _rescale_q(layout, getattr(block, "head_dim", layout.head_dim), head_dim)
                block.head_dim, block.scale = head_dim, head_dim ** -0.5
                _set_width(block, layout.num_heads * head_dim)
                adopt_head_dim_forward(block)  # a no-op for blocks that read head_dim already
            continue
        per_head = layout.parts * layout.head_dim
        heads = _whole(block, out, per_head, f"heads of {per_head} ({layout.parts} x head_dim {layout.head_dim})")
        if heads != block.num_heads:
            changed.append((block, block.num_heads, heads))
            block.num_heads = heads
            _set_width(block, heads * layout.head_dim)
    return changed


def head_dim_changes(layouts: dict[nn.Module, HeadLayout]) -> list[tuple[nn.Module, int, int]]:
    """``(block, head_dim before, head_dim now)`` for every block that has lost head dimensions.

    Examples:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
        >>> head_dim_changes(find_heads(vit))
        []
    """
    return [
        (layout.block, layout.head_dim, getattr(layout.block, "head_dim", layout.head_dim))
        for layout in layouts.values()
        if layout.unit == "dim" and layout.parts > 1
        and getattr(layout.block, "head_dim", layout.head_dim) != layout.head_dim
    ]


def _set_width(block: nn.Module, width: int) -> None:
    for attr in _WIDTH_ATTRS:
        if isinstance(getattr(block, attr, None), int):
            setattr(block, attr, width)


def _rescale_q(layout: HeadLayout, old: int, new: int) -> None:
    """Keep the trained softmax scale: q . k / sqrt(old) == (c q) . k / sqrt(new) with c = sqrt(new / old).

    q is the first of the projection's parts (timm's ``reshape(B, N, 3, heads, head_dim)``), so its rows are the
    first ``num_heads * new`` outputs. Factors of successive calls multiply to ``sqrt(new / original)``.
    """
    rows = layout.num_heads * new
    factor = math.sqrt(new / old)
    with torch.no_grad():
        layout.projection.weight[:rows].mul_(factor)
        if layout.projection.bias is not None:
            layout.projection.bias[:rows].mul_(factor)
