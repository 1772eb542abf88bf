"""timm attention blocks whose forward takes widths from the input, re-expressed to read them from the block.

CaiT's ``TalkingHeadAttn``, VOLO's and ConViT's self-attention (``MHSA``, and ``GPSA`` with its own v), DaViT's
window attention and Twins' locally grouped attention reshape their projections with ``C // num_heads`` (``C``
the block's *input* width) and the attention output back to ``C``; Twins' and PVT-v2's sub-sampled attention
also reshape the sub-sampling conv's output to ``C``. Once heads lose dimensions or the residual stream shrinks
(`pfgdf_plugin.pruning.attention`) none of that holds, though nothing else in them depends on those widths.
`adopt_head_dim_forward` gives such a block a subclass of its own class whose forward computes the same thing
with ``head_dim`` read from the block and the other widths inferred (``-1``); ``isinstance`` checks,
parameters, buffers and state-dict keys are unchanged, and so is what the block computes (tested against
timm's forward on both of its paths). prune() gives them to its working copies before tracing
(`adopt_head_dim_forwards`), so the model it returns has them.

Examples:
    >>> import timm, torch
    >>> net = timm.create_model("cait_xxs24_224", img_size=32, patch_size=16, depth=1, num_classes=2).eval()
    >>> block = net.blocks[0].attn
    >>> x = torch.randn(1, 4, 192)
    >>> before = block(x)
    >>> adopt_head_dim_forward(block)
    True
    >>> type(block).__name__, block.head_dim, isinstance(block, timm.models.cait.TalkingHeadAttn)
    ('TalkingHeadAttnByHeadDim', 48, True)
    >>> bool(torch.allclose(block(x), before, atol=1e-6))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pfgdf_plugin.models.layers import channel_count

MARK = "head_dim_forward"
"""The plain attribute set on a block given a head-dim forward (recorded by `save_pruned`)."""


def _attend(block: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """timm's attention core: the fused kernel when the block uses it, else ``softmax(q * scale @ k^T) @ v``."""
    drop = getattr(block, "attn_drop", None)
    if getattr(block, "fused_attn", False):
        p = drop.p if drop is not None and block.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    attn = (q * block.scale) @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    if drop is not None:
        attn = drop(attn)
    return attn @ v


def _qkv(block: nn.Module, x: torch.Tensor, *lead: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as ``(..., heads, tokens, head_dim)`` from ``x`` of shape ``(*lead, tokens, C)``."""
    n = len(lead)
    qkv = block.qkv(x).reshape(*lead, x.shape[-2], 3, block.num_heads, block.head_dim)
    # (*lead, tokens, 3, heads, d) -> (3, *lead, heads, tokens, d)
    order = (n + 1, *range(n), n + 2, n, n + 3)
    q, k, v = qkv.permute(*order).unbind(0)
    return q, k, v


def _talking_heads(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # cait.TalkingHeadAttn
    B, N, _ = x.shape
    q, k, v = _qkv(self, x, B)  # unbound, where timm selects qkv[0], qkv[1], qkv[2]: the same tensors
    attn = (q * self.scale) @ k.transpose(-2, -1)
    attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    attn = attn.softmax(dim=-1)
    attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    attn = self.attn_drop(attn)
    x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def _tokens(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # volo.Attention on (B, H, W, C)
    B, H, W, C = x.shape
    q, k, v = _qkv(self, x.reshape(B, H * W, C), B)
    x = _attend(self, q, k, v).transpose(1, 2).reshape(B, H, W, -1)
    return self.proj_drop(self.proj(x))


def _sequence(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # davit.WindowAttention on (B, N, C)
    B, N, _ = x.shape
    q, k, v = _qkv(self, x, B)
    x = _attend(self, q, k, v).transpose(1, 2).reshape(B, N, -1)
    x = self.proj(x)
    drop = getattr(self, "proj_drop", None)
    return x if drop is None else drop(x)


def _scaled_after(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # convit.MHSA: scale after q @ k^T
    B, N, _ = x.shape
    q, k, v = _qkv(self, x, B)
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def _locally_grouped(self: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # twins
    B, N, C = x.shape
    H, W = size
    ws = self.ws
    x = x.view(B, H, W, C)
    pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, Hp, Wp, _ = x.shape
    _h, _w = Hp // ws, Wp // ws
    x = x.reshape(B, _h, ws, _w, ws, C).transpose(2, 3)
    qkv = self.qkv(x).reshape(B, _h * _w, ws * ws, 3, self.num_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv.unbind(0)
    x = _attend(self, q, k, v)
    x = x.transpose(2, 3).reshape(B, _h, _w, ws, ws, -1)
    x = x.transpose(2, 3).reshape(B, _h * ws, _w * ws, -1)
    if pad_r > 0 or pad_b > 0:
        x = x[:, :H, :W, :].contiguous()
    x = x.reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def _sub_sampled(self: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # twins.GlobalSubSampleAttn and pvt_v2.Attention: q from every token, k and v from a sub-sampled map whose
    # width is the sub-sampling conv's (timm reshapes it, and q, k, v, to the input width C).
    B, N, C = x.shape
    q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
    pool = getattr(self, "pool", None)
    if self.sr is not None:
        x = x.permute(0, 2, 1).reshape(B, C, *size)
        x = self.sr(x if pool is None else pool(x))
        x = self.norm(x.reshape(B, x.shape[1], -1).permute(0, 2, 1))
        if getattr(self, "act", None) is not None:
            x = self.act(x)
    k, v = self.kv(x).reshape(B, x.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    x = _attend(self, q, k, v).transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def _gpsa(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # convit.GPSA: its own v, reshaped with C // heads
    B, N, _ = x.shape
    if self.rel_indices is None or self.rel_indices.shape[1] != N:
        self.rel_indices = self.get_rel_indices(N)
    attn = self.get_attention(x)
    v = self.v(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
    x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def _gpsa_attention(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # convit.GPSA.get_attention
    B, N, _ = x.shape
    qk = self.qk(x).reshape(B, N, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qk[0], qk[1]
    pos_score = self.pos_proj(self.rel_indices.expand(B, -1, -1, -1)).permute(0, 3, 1, 2)
    patch_score = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    pos_score = pos_score.softmax(dim=-1)
    gating = self.gating_param.view(1, -1, 1, 1)
    attn = (1. - torch.sigmoid(gating)) * patch_score + torch.sigmoid(gating) * pos_score
    attn /= attn.sum(dim=-1).unsqueeze(-1)
    return self.attn_drop(attn)


def _relpos(self: nn.Module, x: torch.Tensor, shared_rel_pos: torch.Tensor | None = None) -> torch.Tensor:
    B, N, _ = x.shape  # vision_transformer_relpos.RelPosAttention: reads head_dim, but reshapes back to C
    q, k, v = _qkv(self, x, B)
    q, k = self.q_norm(q), self.k_norm(k)
    if self.fused_attn:
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)
    else:
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.rel_pos is not None:
            attn = self.rel_pos(attn, shared_rel_pos=shared_rel_pos)
        elif shared_rel_pos is not None:
            attn = attn + shared_rel_pos
        x = self.attn_drop(attn.softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


FORWARDS: dict[tuple[str, str], Callable[..., torch.Tensor]] = {
    ("timm.models.cait", "TalkingHeadAttn"): _talking_heads,
    ("timm.models.volo", "Attention"): _tokens,
    ("timm.models.davit", "WindowAttention"): _sequence,
    ("timm.models.convit", "MHSA"): _scaled_after,
    ("timm.models.twins", "LocallyGroupedAttn"): _locally_grouped,
    ("timm.models.vision_transformer_relpos", "RelPosAttention"): _relpos,
    ("timm.models.twins", "GlobalSubSampleAttn"): _sub_sampled,
    ("timm.models.pvt_v2", "Attention"): _sub_sampled,
    ("timm.models.convit", "GPSA"): _gpsa,
}
"""timm attention classes (module, qualified name) with a forward that reads ``head_dim``."""

_OTHER_METHODS: dict[tuple[str, str], dict[str, Callable[..., torch.Tensor]]] = {
    ("timm.models.convit", "GPSA"): {"get_attention": _gpsa_attention},
}
"""Methods besides ``forward`` that the same classes re-express."""

_SUBCLASSES: dict[type, type] = {}


def base_class(block: nn.Module) -> type:
    """The timm class of ``block`` (its own class unless it was given a head-dim forward)."""
    cls = type(block)
    return cls.__bases__[0] if getattr(cls, "_head_dim_forward", False) else cls


def class_key(block: nn.Module) -> tuple[str, str]:
    """``(module, qualified name)`` of the timm class of ``block``: how blocks are matched, never by name alone."""
    cls = base_class(block)
    return cls.__module__, cls.__qualname__


def has_head_dim_forward(block: nn.Module) -> bool:
    """Whether ``block`` is (or can be given) a forward that reads ``head_dim`` from the block."""
    return class_key(block) in FORWARDS


def adopt_head_dim_forward(block: nn.Module) -> bool:
    """Give ``block`` its class's head-dim forward (once); ``False`` when its class has none.

    Sets ``head_dim`` from a fused ``qkv`` projection when the block lacks it (``qkv`` outputs / (3 x heads)).
    """
    if getattr(type(block), "_head_dim_forward", False):
        return True
    cls, key = type(block), class_key(block)
    forward = FORWARDS.get(key)
    if forward is None:
        return False
    if not isinstance(getattr(block, "head_dim", None), int) and hasattr(block, "qkv"):
        block.head_dim = channel_count(block.qkv, "out") // (3 * block.num_heads)
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = type(f"{cls.__name__}ByHeadDim", (cls,), {
            "forward": forward, **_OTHER_METHODS.get(key, {}), "_head_dim_forward": True,
            "__module__": __name__,
            "__doc__": f"timm's ``{cls.__qualname__}`` with ``head_dim`` read from the block (see {__name__}).",
        })
        _SUBCLASSES[cls] = sub
    block.__class__ = sub
    setattr(block, MARK, True)
    return True


def adopt_head_dim_forwards(model: nn.Module) -> int:
    """Give every block of ``model`` whose class has one its head-dim forward; how many blocks there were.

    prune() does this to its working copies before tracing them, so the dependency graph sees the forward the
    pruned model runs (CaiT's, which reads q, k and v as ``qkv[0]``, ``qkv[1]``, ``qkv[2]``, is traced as one
    ``unbind`` that Torch-Pruning maps part by part).
    """
    return sum(adopt_head_dim_forward(block) for block in list(model.modules()))


def adopt_marked(model: nn.Module) -> None:
    """Give every block marked by `adopt_head_dim_forward` (as `load_pruned` rebuilds them) its forward.

    Raises ``ValueError`` for a marked block whose class has none (a file from a newer version).
    """
    for name, block in model.named_modules():
        if getattr(block, MARK, False) is True and not adopt_head_dim_forward(block):
            raise ValueError(f"the saved model's block {name!r} ({type(block).__name__}) reads head_dim from "
                             "itself, which this version of pfgdf-plugin cannot give that class; upgrade it")

