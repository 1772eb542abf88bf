"""Time budgets for pure-Python work that may not finish (Torch-Pruning's dependency search on some graphs)."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator


class BudgetExceeded(TimeoutError):
    """Raised inside a :func:`time_budget` block that ran longer than its budget."""


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Raise :class:`BudgetExceeded` in the calling thread once ``seconds`` have passed inside the block.

    A timer thread raises the exception asynchronously in the caller, so the block is interrupted between two
    Python bytecodes: this stops runaway Python loops (what the dependency search is), not a single long C
    call. Works in any thread, unlike ``signal.alarm``. ``None`` means no budget.

    Example:
        >>> with time_budget(5.0):
        ...     total = sum(range(1000))
        >>> total
        499500
    """
    if seconds is None:
        yield
        return
    target = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(BudgetExceeded))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except BudgetExceeded:
        raise BudgetExceeded(f"did not finish within {seconds:g} s") from None
    finally:
        with lock:
            state["done"] = True
        timer.cancel()
        if state["fired"]:
            # The exception was scheduled but the block ended before it was delivered: clear it, so that it
            # cannot surface later in unrelated code.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)
