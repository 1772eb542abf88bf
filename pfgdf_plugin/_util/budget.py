"""Deterministic limits for pure-Python work that may not finish (Torch-Pruning's group search on some graphs).

A limit counts work (calls of the loop's hot-spot methods, each weighed by the size of its input where that
varies), never time, so the same input stops at the same
place on every machine. A wall-clock deadline can be checked at the same spots; passing it is a different
exception, meant to end the whole job with an error, never to change what the job produces.

Examples:
    >>> class Search:
    ...     def step(self):
    ...         pass
    >>> with counted_calls(1000, [(Search, "step")]) as budget:
    ...     for _ in range(3):
    ...         Search().step()
    >>> budget.calls
    3
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


class BudgetExceeded(BaseException):
    """Raised inside a counted block that made more calls than its limit.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception`` blocks inside the interrupted
    library code cannot swallow it.
    """


class DeadlineExceeded(BaseException):
    """Raised inside a counted block whose wall-clock deadline passed (an error for the caller, not a limit)."""


Weight = Callable[..., int]
"""The work one call does, from the call's arguments (``self`` first)."""


class counted_calls:  # lower case: used like a function, `with counted_calls(...):`
    """Count work in calls of ``methods`` inside the block; raise `BudgetExceeded` from the call that brings it
    past ``limit`` (``None``: no limit), and `DeadlineExceeded` once ``time.perf_counter()`` passes ``deadline``
    (``None``: none).

    ``methods`` are ``(owner class, name)`` pairs, each call one unit of work, or ``(owner class, name, weight)``
    triples, each call ``weight(*args, **kwargs)`` units (at least 1): a call mapping a list of 10,000 indices
    is 10,000 times the work of one mapping a single index. The methods are replaced on their classes only
    while the block runs and restored afterwards.

    Examples:
        >>> class Mapping:
        ...     def __call__(self, idxs):
        ...         return idxs
        >>> with counted_calls(None, [(Mapping, "__call__", lambda self, idxs: len(idxs))]) as work:
        ...     _ = Mapping()(list(range(500))), Mapping()([1])
        >>> work.calls
        501
    """

    def __init__(
        self, limit: int | None, methods: Sequence[tuple[type, str] | tuple[type, str, Weight]],
        deadline: float | None = None,
    ) -> None:
        self.limit, self.methods, self.deadline = limit, methods, deadline
        self.calls = 0
        self._checks = 0
        self._saved: list[tuple[type, str, Callable[..., Any]]] = []

    def _check(self, work: int = 1) -> None:
        self.calls += max(1, work)
        self._checks += 1
        if self.limit is not None and self.calls > self.limit:
            raise BudgetExceeded(f"did not finish within {self.limit:,} units of work")
        # The clock is read every 1,024 calls only: cheap, and a deadline needs no finer grain.
        if self.deadline is not None and not self._checks & 1023 and time.perf_counter() > self.deadline:
            raise DeadlineExceeded("deadline passed")

    def __enter__(self) -> counted_calls:
        self._checks = 0
        for owner, name, *weighed in self.methods:
            original = getattr(owner, name)
            weight = weighed[0] if weighed else None

            def checked(
                *args: Any, _original: Callable[..., Any] = original, _weight: Weight | None = weight, **kwargs: Any
            ) -> Any:
                self._check(1 if _weight is None else int(_weight(*args, **kwargs)))
                return _original(*args, **kwargs)

            self._saved.append((owner, name, original))
            setattr(owner, name, checked)
        return self

    def __exit__(self, *_exc: object) -> bool:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        return False
