"""Has a model changed since CHIP calibrated on it? A cheap key checked on every call, an exact digest behind it.

`StateKey` records, for every parameter and buffer, the tensor object itself (a weak reference), its storage
address, its shape, dtype and PyTorch's version counter (bumped by every in-place write made through the tensor:
optimizer steps, ``load_state_dict``, ``with torch.no_grad(): w.mul_(...)``, BatchNorm's batch counter in a
training forward). Torch-Pruning replaces the parameters it prunes by new ones, so a pruned layer changes the key
too. Building or comparing a key takes about 0.4 ms for a ResNet-18 (see ``docs/chip.md``), so it is
checked on every call of the importance.

An unchanged key means the very same tensors with no tracked write since: the model is the calibrated one. A
changed key (another model object, such as the deep copy ``prune()`` scores, or a write) is settled by
`state_digest`, a hash of every value in the state dict (tens of milliseconds), compared with the digest taken at
calibration.

Not seen by the key: writes through ``tensor.data`` (PyTorch keeps them off the version counter on purpose) and
buffers that a kernel updates without a version bump (BatchNorm's running statistics: its batch counter, which
is seen, moves with them). After such writes call `CHIPImportance.forget`.

Examples:
    >>> import torch
    >>> net = torch.nn.Linear(3, 2)
    >>> key = StateKey.of(net)
    >>> key.matches(net)
    True
    >>> with torch.no_grad():
    ...     _ = net.weight.mul_(2.0)
    >>> key.matches(net)
    False
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def _mark(t: torch.Tensor) -> tuple:
    # ``_version`` is PyTorch's in-place write counter (what autograd's "modified by an inplace operation" check
    # reads); it is the one cheap signal that a tensor's values were written.
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)


class StateKey:
    """Identity, storage, shape and write counter of every parameter and buffer of a model, at one moment."""

    __slots__ = ("marks", "refs")

    def __init__(self, refs: list[weakref.ref], marks: list[tuple]) -> None:
        self.refs = refs
        self.marks = marks

    @classmethod
    def of(cls, model: nn.Module) -> StateKey:
        """The key of ``model`` now."""
        refs, marks = [], []
        for t in _tensors(model):
            refs.append(weakref.ref(t))
            marks.append(_mark(t))
        return cls(refs, marks)

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` holds exactly the tensors of this key, unwritten since (see the module's notes)."""
        n = 0
        for t in _tensors(model):
            if n >= len(self.refs) or self.refs[n]() is not t or self.marks[n] != _mark(t):
                return False
            n += 1
        return n == len(self.refs)

    def shapes(self) -> list[tuple]:
        """Shape of every tensor of the key, in order."""
        return [m[2] for m in self.marks]


def shapes_of(model: nn.Module) -> list[tuple]:
    """Shape of every parameter and buffer of ``model``, in the order `StateKey` records them."""
    return [tuple(t.shape) for t in _tensors(model)]


def state_digest(model: nn.Module) -> str:
    """Digest of every tensor in the state dict (names, dtypes, shapes and values): equal digests, equal states.

    Examples:
        >>> import copy, torch
        >>> net = torch.nn.Linear(3, 2)
        >>> state_digest(net) == state_digest(copy.deepcopy(net))
        True
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()
