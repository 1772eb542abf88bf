"""How many CPU threads the work uses: one count, applied to torch (intra- and inter-op) and read by ONNX Runtime.

`set_threads` is called once by every CLI command that computes (``pfgdf demo``, ``run``, ``prune``, ``compare``,
from their ``--threads``); code that opens ONNX Runtime sessions passes `current_threads` as their thread count
(``deploy.session.create_session(path, threads=current_threads())``), so torch and ONNX Runtime never disagree.
Latency measurements choose their own counts (``bench --threads``, ``benchmark.threads``): what they time is a
setting of the measurement, not of the machine doing the work.

Why one thread by default: torch's default (one intra-op thread per core) oversubscribes a machine that is busy
with anything else. Measured on a 2-core machine shared with other jobs (load average 1 to 6): ``pfgdf demo``
35 s at 1 thread, 323 s at 2; one of its training epochs 1.2 to 2.9 s against 8.6 to 16 s (3.7 to 5.2 s against
29 to 55 s with one extra CPU-bound process running); CHIP calibration of efficientnet_b0 at 224 on one batch of
32 images 17.5 s against 193 s.

Examples:
    >>> previous = set_threads(1)
    >>> current_threads()
    1
    >>> set_threads(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --threads must be an integer in [1, ...], got 0
"""

from __future__ import annotations

import os

DEFAULT_THREADS = 1

_current: int = DEFAULT_THREADS


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


def check_threads(name: str, threads: object) -> int:
    """``threads`` as an int in [1, CPUs available]: more threads than cores only contend.

    Raises:
        ValueError: not an integer in that range (the message names ``name``).
    """
    from pfgdf_plugin._util import validate

    return validate.integer(name, threads, 1, available_cpus())


def set_threads(threads: int, name: str = "--threads") -> int:
    """Make torch use ``threads`` intra-op and inter-op threads, and remember the count for ONNX Runtime.

    torch fixes its inter-op pool on first use; once it exists, only the intra-op count changes (the inter-op pool
    serves ``torch.jit.fork`` only, which nothing here uses).

    Returns:
        The count torch used before, to restore it with ``set_threads(previous)``.

    Raises:
        ValueError: ``threads`` is not an integer in [1, CPUs available]; nothing is changed.
    """
    global _current
    count = check_threads(name, threads)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != count:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # the inter-op pool already started: its size is fixed for this process
            pass
    _current = count
    return previous


def current_threads() -> int:
    """The count of the last `set_threads` call (`DEFAULT_THREADS` before any): pass it to ONNX Runtime sessions."""
    return _current


__all__ = ["DEFAULT_THREADS", "available_cpus", "check_threads", "current_threads", "set_threads"]
