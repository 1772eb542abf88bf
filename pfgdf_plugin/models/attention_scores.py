"""Attention scores hidden from Torch-Pruning's trace, so channel groups stop at the score matrix.

Torch-Pruning treats every operation it does not know as element-wise: channel positions pass through. In
``softmax(q @ k^T + bias) @ v`` that is wrong twice. The scores' last axes are tokens (the channels were summed
away), yet the trace carried q's channel positions on into relative-position tables (Swin, BEiT: pruned along
their heads axis), talking-heads projections (CaiT) and, for a table shared by all blocks, into every block's
group at once (a search that ran away). And ``attn @ v`` carries only v's channels.

So while the graph is traced, the scores of a fused projection (q and k read from the same layer's output) are
computed as usual but reach ``attn @ v`` detached, and the ``attn_mask`` of ``scaled_dot_product_attention``
(a bias over heads and tokens, never channels) is detached too. The model computes the same values; its group
is then the projection's outputs and what v feeds, and `pfgdf_plugin.pruning.attention` keeps q, k and v
aligned. q and k from different layers keep the full trace: only their joint path ties them together.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
# Autograd nodes a tensor passes through between its projection and the score matmul (reshapes, head splits,
# the softmax scale): followed to find the layer both q and k come from.
_PASS = ("View", "Reshape", "Permute", "Transpose", "Select", "Unbind", "Split", "Unsafe", "Clone", "Expand",
         "Mul", "Div", "Squeeze", "Unsqueeze", "Slice", "Contiguous", "Alias")


def _projection(t: torch.Tensor, steps: int = 16) -> object:
    """The autograd node of the layer ``t`` was cut from (the first node that is not a reshape or a scaling)."""
    fn = t.grad_fn
    for _ in range(steps):
        if fn is None or not any(p in fn.name() for p in _PASS):
            return fn
        nxt = [f for f, _ in fn.next_functions if f is not None and "AccumulateGrad" not in f.name()]
        fn = nxt[0] if len(nxt) == 1 else None
    return None


def _flat(args: object) -> Iterator[object]:
    if isinstance(args, tuple | list):
        for a in args:
            yield from _flat(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _flat(a)
    else:
        yield args


class hidden_scores(TorchFunctionMode):  # lower case: used like a function, `with hidden_scores():`
    """A block in which attention scores of fused projections reach ``attn @ v`` detached (see the module).

    Examples:
        >>> lin = torch.nn.Linear(4, 12)
        >>> x = torch.randn(1, 5, 4)
        >>> with hidden_scores() as mode:
        ...     q, k, v = lin(x).chunk(3, dim=-1)
        ...     out = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        >>> mode.cut  # softmax(q @ k^T) reached @ v detached: out's trace holds v's channels only
        1
    """

    def __init__(self) -> None:
        super().__init__()
        self.scores: dict[int, torch.Tensor] = {}  # kept alive while the block runs, so no id is reused
        self.cut = 0

    def __torch_function__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            if len(args) > 3 and isinstance(args[3], torch.Tensor):
                args = (*args[:3], args[3].detach(), *args[4:])
            elif isinstance(kwargs.get("attn_mask"), torch.Tensor):
                kwargs["attn_mask"] = kwargs["attn_mask"].detach()
            return func(*args, **kwargs)
        if func in _MATMULS and len(args) >= 2:
            a, b = args[0], args[1]
            if isinstance(a, torch.Tensor) and id(a) in self.scores:
                self.cut += 1
                return func(a.detach(), *args[1:], **kwargs)
            out = func(*args, **kwargs)
            if (
                isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.requires_grad and b.requires_grad
                and a.dim() >= 3 and b.dim() >= 3 and (source := _projection(a)) is not None
                and source is _projection(b)
            ):
                self.scores[id(out)] = out
            return out
        out = func(*args, **kwargs)
        if self.scores and any(isinstance(t, torch.Tensor) and id(t) in self.scores for t in _flat((args, kwargs))):
            for t in _flat(out):
                if isinstance(t, torch.Tensor):
                    self.scores[id(t)] = t
        return out
