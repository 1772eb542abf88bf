"""One-channel operands hidden from Torch-Pruning's trace: a tensor broadcast over the channels carries none.

FocalNet's modulation computes ``ctx * gates[:, l:l + 1]``: a one-channel gate scales every channel of ``ctx``.
Torch-Pruning treats the product as element-wise with channel positions passing between both operands, so the
gate's single channel joined every group through the block and each group's search ran away (48 groups of
FocalNet-T left alone). While the graph is traced, such an operand (a 4-D tensor with one channel, dimension 1,
where the other operand has several) is used detached; the values are the same.

Only 4-D (N, C, H, W) tensors: a 3-D token tensor with one feature can be the product of the channels with a
weight vector (SwiftFormer's additive attention, ``query @ w_g``), and hiding it would hide that weight from the
group that must prune its rows.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_BINARY = {
    torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__,
    torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__,
    torch.sub, torch.Tensor.sub, torch.Tensor.__sub__, torch.Tensor.__rsub__,
    torch.div, torch.Tensor.div, torch.Tensor.__truediv__, torch.Tensor.__rtruediv__,
}




class hidden_broadcasts(TorchFunctionMode):  # lower case: used like a function, `with hidden_broadcasts():`
    """A block in which a one-channel operand of an element-wise product, sum, difference or quotient with a
    many-channel tensor is used detached (see the module).

    Examples:
        >>> ctx = torch.randn(1, 8, 4, 4, requires_grad=True)
        >>> gate = torch.randn(1, 1, 4, 4, requires_grad=True)
        >>> with hidden_broadcasts() as mode:
        ...     out = ctx * gate
        >>> mode.hidden, len([f for f, _ in out.grad_fn.next_functions if f is not None])
        (1, 1)
    """

    def __init__(self) -> None:
        super().__init__()
        self.hidden = 0

    def __torch_function__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        kwargs = kwargs or {}
        if func in _BINARY and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]):
            a, b = args[0], args[1]
            axis = 1
            if a.dim() == b.dim() == 4:
                if a.shape[axis] == 1 < b.shape[axis] and a.requires_grad:
                    self.hidden += 1
                    args = (a.detach(), *args[1:])
                elif b.shape[axis] == 1 < a.shape[axis] and b.requires_grad:
                    self.hidden += 1
                    args = (a, b.detach(), *args[2:])
        return func(*args, **kwargs)
