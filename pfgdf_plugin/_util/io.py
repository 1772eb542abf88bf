"""Writing files safely: atomic replacement, no temp files left behind, one writer at a time, staged sets.

* `atomic_path` / `write_text` / `write_with`: a file is complete or untouched. Temp files are named
  ``.<name>.<pid>.<random>.tmp`` next to the target; they are removed on any exception (and on SIGTERM inside
  `terminate_cleanly`), and a later write sweeps those whose process no longer runs.
* `output_lock`: a second process writing the same output fails at once, naming the first.
* `staged_directory`: a set of files written into a fresh directory beside the target, then moved in.

Examples:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = write_text(os.path.join(d, "a.txt"), "hello")
    >>> sorted(os.listdir(d))
    ['a.txt']
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

# Temp files of a version without the pid in their name are swept once this old.
_STALE_SECONDS = 24 * 3600


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives inside `terminate_cleanly` (like ``KeyboardInterrupt``)."""


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` inside the block, so that every ``finally`` and cleanup runs.

    Without it, SIGTERM ends the process at once and leaves half-written temp files behind.
    """
    def raise_terminated(_signum: int, _frame: FrameType | None) -> None:
        raise Terminated("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(directory: Path, name: str) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files in ``directory`` left by processes that no longer run; returns them."""
    removed = []
    for tmp in directory.glob(f".{name}.*.tmp"):
        parts = tmp.name[len(name) + 2:].split(".")
        pid = int(parts[0]) if len(parts) >= 3 and parts[0].isdigit() else None
        try:
            stale = not _alive(pid) if pid is not None else time.time() - tmp.stat().st_mtime > _STALE_SECONDS
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_with(path: str | os.PathLike, writer: Callable[[IO], None]) -> Path:
    """Atomically write whatever ``writer(file_object)`` writes (binary) to ``path``."""
    with atomic_path(path, "wb") as fh:
        writer(fh)
    return Path(path)


class OutputBusyError(RuntimeError):
    """Another process is writing the same output."""


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file or directory to be written) for the block.

    The lock is ``.<name>.lock`` beside ``path``, locked with ``flock`` (released by the kernel if the process
    dies). A second holder fails at once with `OutputBusyError` naming the first one's pid.

    Examples:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "out")
        >>> with output_lock(target):
        ...     with output_lock(target):
        ...         pass
        Traceback (most recent call last):
        ...
        pfgdf_plugin._util.io.OutputBusyError: ...
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise OutputBusyError(f"{str(target)!r} is being written by another process (pid {holder}); wait for "
                                  "it to finish or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh empty directory beside ``target`` to write a set of files into; removed if the block fails.

    Move its files into ``target`` with `commit_staged` at the end of the block.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".staging", dir=final.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit_staged(stage: Path, target: Path, manifest: str, replaces: list[str]) -> None:
    """Move every file of ``stage`` into ``target`` as one set.

    The old ``manifest`` file goes first and the new one (which must be in ``stage``) last, so a reader that
    trusts only a present manifest never pairs files of two runs; files named in ``replaces`` that this set
    does not have are removed, so no file of an earlier run lingers beside the new set. When ``target`` does not
    exist yet, the whole directory is renamed in one step.
    """
    if not target.exists():
        os.replace(stage, target)
        stage.mkdir()  # staged_directory removes it afterwards
        return
    with contextlib.suppress(FileNotFoundError):
        (target / manifest).unlink()
    new = {p.name for p in stage.iterdir()}
    for name in replaces:
        if name not in new:
            with contextlib.suppress(FileNotFoundError):
                (target / name).unlink()
    for file in sorted(stage.iterdir(), key=lambda p: p.name == manifest):
        os.replace(file, target / file.name)
