"""Time budgets for pure-Python work that may not finish (Torch-Pruning's dependency search on some graphs)."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any


class BudgetExceeded(BaseException):
    """Raised inside a budgeted block that ran longer than its budget.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception`` blocks inside the interrupted
    library code cannot swallow it.
    """


class time_budget:  # lower case: used like a function, `with time_budget(5.0): ...`
    """Raise `BudgetExceeded` in the calling thread once ``seconds`` have passed inside the block.

    A timer thread raises the exception asynchronously in the caller, once, so the block is interrupted
    between two Python bytecodes: this stops runaway Python loops, not a single long C call. Should the block
    swallow it and still finish late, leaving the block raises instead. ``None`` means no budget.

    Examples:
        >>> with time_budget(5.0):
        ...     total = sum(range(1000))
        >>> total
        499500
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._active = False
        self._fired = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _fire(self, target: int) -> None:
        if self._stop.wait(self.seconds):
            return
        with self._lock:
            if self._active:
                self._fired = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(BudgetExceeded))

    def __enter__(self) -> time_budget:
        self._start = time.perf_counter()
        if self.seconds is not None:
            self._active = True
            threading.Thread(target=self._fire, args=(threading.get_ident(),), daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self.seconds is None:
            return False
        with self._lock:
            self._active = False
            if self._fired and kind is not BudgetExceeded:
                # Scheduled but not yet delivered: clear it, so that it cannot surface in unrelated code.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
        self._stop.set()
        late = time.perf_counter() - self._start > self.seconds
        if kind is BudgetExceeded or (kind is None and late and self._fired):
            raise BudgetExceeded(f"did not finish within {self.seconds:g} s") from None
        return False


class checked_calls:  # lower case: used like a function
    """Raise `BudgetExceeded` from inside ``methods`` once ``seconds`` have passed in the block.

    Cooperative: the listed methods (``(owner class, name)`` pairs, hot spots of the loop being bounded) check
    the clock on every call while the block runs; nothing is raised asynchronously, so nothing can surface
    after the block. ``None`` means no budget.

    Examples:
        >>> class Loop:
        ...     def step(self):
        ...         pass
        >>> with checked_calls(60.0, [(Loop, "step")]):
        ...     for _ in range(3):
        ...         Loop().step()
    """

    def __init__(self, seconds: float | None, methods: Sequence[tuple[type, str]]) -> None:
        self.seconds, self.methods = seconds, methods
        self._saved: list[tuple[type, str, Callable[..., Any]]] = []

    def __enter__(self) -> checked_calls:
        if self.seconds is None:
            return self
        deadline = time.perf_counter() + self.seconds
        seconds = self.seconds
        for owner, name in self.methods:
            original = getattr(owner, name)

            def checked(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                if time.perf_counter() > deadline:
                    raise BudgetExceeded(f"did not finish within {seconds:g} s")
                return _original(*args, **kwargs)

            self._saved.append((owner, name, original))
            setattr(owner, name, checked)
        return self

    def __exit__(self, *_exc: object) -> bool:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()
        return False
