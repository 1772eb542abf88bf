"""Each model in its own child process, under a time and a memory limit; `sweep` runs many, ``jobs`` at a time.

A hang, a crash or a memory blow-up costs one row, never the sweep: the child is stopped with everything it
started, and its last progress marks name the model and the stage it was in.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pfgdf_plugin._util import validate as check
from pfgdf_plugin.studies.coverage.cases import (
    DEFAULT_MEMORY_LIMIT_GB,
    DEFAULT_TIMEOUT,
    TARGET_MACS,
    Case,
    cases_for,
    module_of,
)
from pfgdf_plugin.studies.coverage.protocol import MARK_PREFIX, ROW_PREFIX, last_marks
from pfgdf_plugin.studies.coverage.result import CoverageReport, CoverageRow, by_family

# The child's entry point; run by name, so that this module never imports it.
CHILD_MODULE = "pfgdf_plugin.studies.coverage.child"


def check_model(
    name: str | Case,
    *,
    input_size: Sequence[int] | None = None,
    create_kwargs: Mapping[str, Any] | None = None,
    target_macs: float = TARGET_MACS,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
    memory_limit_gb: float = DEFAULT_MEMORY_LIMIT_GB,
) -> CoverageRow:
    """Check one timm model (or a `Case`) against the four criteria, in a child process.

    The child gets ``threads`` torch / OpenMP threads and is stopped after ``timeout`` seconds (status
    ``timeout``) or above ``memory_limit_gb`` of resident memory (status ``exception``).

    Args:
        name: a timm model name, or a `Case` (then ``input_size`` and ``create_kwargs`` are not used).
        input_size: ``(channels, height, width)`` instead of the model's default.
        create_kwargs: passed to ``timm.create_model``.
        target_macs: the MACs fraction asked of `prune`.
        timeout: seconds before the child is stopped.
        threads: torch / OpenMP threads in the child.
        memory_limit_gb: resident memory (GB) above which the child is stopped.

    Returns:
        The model's row; a child that died or was stopped gives a row too.

    Raises:
        ValueError: a bad setting.
    """
    check.positive_float("timeout", timeout)
    check.integer("threads", threads, 1)
    check.positive_float("memory_limit_gb", memory_limit_gb)
    check.fraction("target_macs", target_macs)
    if isinstance(name, Case):
        case = name
    else:
        size = None if input_size is None else (int(input_size[0]), int(input_size[1]), int(input_size[2]))
        case = Case(name, input_size=size, create_kwargs=dict(create_kwargs or {}))
    return run_child(case, target_macs=target_macs, timeout=timeout, threads=threads,
                     memory_limit_gb=memory_limit_gb)


def child_command(case: Case, target_macs: float) -> list[str]:
    """The command line that checks ``case`` in a child process.

    Examples:
        >>> " ".join(child_command(Case("resnet10t", input_size=(3, 64, 64)), 0.5)[2:])
        'pfgdf_plugin.studies.coverage.child --one resnet10t --kind model --target-macs 0.5 --input-size 3x64x64'
    """
    cmd = [sys.executable, "-m", CHILD_MODULE, "--one", case.name, "--kind", case.kind,
           "--target-macs", repr(target_macs)]
    if case.input_size:
        cmd += ["--input-size", "x".join(map(str, case.input_size))]
    if case.create_kwargs:
        cmd += ["--create-kwargs", json.dumps(dict(case.create_kwargs))]
    return cmd


def run_child(case: Case, *, target_macs: float, timeout: float, threads: int,
              memory_limit_gb: float) -> CoverageRow:
    """Check ``case`` in a child process, stopped after ``timeout`` s or above ``memory_limit_gb``; no checks."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PFGDF_COVERAGE_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    stopped = None
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Its own session, so that stopping it stops anything it started too.
        proc = subprocess.Popen(child_command(case, target_macs), stdout=out, stderr=err, env=env,
                                start_new_session=True)
        try:
            stopped = _watch(proc, start, timeout, memory_limit_gb)
        finally:
            if proc.poll() is None:  # interrupted: never leave a child behind
                _kill(proc)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return _row_from_child(case, stdout, stderr, proc.returncode, stopped, seconds)


def _watch(proc: subprocess.Popen, start: float, timeout: float, memory_limit_gb: float) -> str | None:
    """Wait for the child; stop it at a limit and say which one (``None`` when it ended by itself)."""
    while True:
        try:
            proc.wait(timeout=0.25)
            return None
        except subprocess.TimeoutExpired:
            pass
        stopped = None
        if time.perf_counter() - start > timeout:
            stopped = f"no result within {timeout:g} s"
        elif memory_limit_gb and (rss := _rss_gb(proc.pid)) > memory_limit_gb:
            stopped = f"memory limit: {rss:.1f} GB resident > {memory_limit_gb:g} GB"
        if stopped:
            _kill(proc)
            return stopped


def _rss_gb(pid: int) -> float:
    """Resident memory of a process and its descendants (Linux /proc; 0 elsewhere)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total / 2**20


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _row_from_child(case: Case, stdout: str, stderr: str, code: int | None, stopped: str | None,
                    seconds: float) -> CoverageRow:
    rows = [line[len(ROW_PREFIX):] for line in stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if rows and not stopped:
        row = CoverageRow.from_dict(json.loads(rows[-1]))
        row.seconds = round(seconds, 2)
        return row
    model, stage = last_marks(stderr)
    if stopped:
        status = "timeout" if stopped.startswith("no result") else "exception"
        reason = f"{stage}: {stopped}"
    else:
        status = "exception"
        tail = [line for line in stderr.strip().splitlines() if not line.startswith(MARK_PREFIX)]
        died = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        reason = f"{stage}: process {died}" + (f": {tail[-1][:300]}" if tail else "")
    is_module = case.kind == "module"
    return CoverageRow(
        family=case.name if is_module else _quiet_module_of(case.name),
        model=model or ("" if is_module else case.name),
        status=status,
        reason=reason,
        input_size=list(case.input_size) if case.input_size else None,
        create_kwargs=dict(case.create_kwargs),
        problems=[reason],
        seconds=round(seconds, 2),
    )


def _quiet_module_of(name: str) -> str:
    try:
        return module_of(name)
    except ValueError:
        return ""


def _environment() -> dict[str, Any]:
    import timm

    from pfgdf_plugin.measure.platform import environment

    env = environment()
    env["versions"]["timm"] = timm.__version__
    return env


def sweep(
    modules: Iterable[str] | None = None,
    *,
    models: Iterable[str] | None = None,
    cases: Iterable[Case] | None = None,
    jobs: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    threads: int = 1,
    memory_limit_gb: float = DEFAULT_MEMORY_LIMIT_GB,
    target_macs: float = TARGET_MACS,
    progress: bool = True,
    on_row: Callable[[CoverageRow, list[CoverageRow]], None] | None = None,
) -> CoverageReport:
    """Check many models, each in its own process, ``jobs`` at a time; a failing model costs only its row.

    ``modules`` (timm module names: the smallest variant of each), ``models`` (timm model names) and ``cases``
    are combined; with none of them every module of ``timm.list_modules()`` is checked. ``on_row(row, rows)``
    is called after each model (e.g. to save partial results). A progress bar on stderr names the running
    models. ``timeout``, ``threads``, ``memory_limit_gb`` and ``target_macs`` apply to each model as in
    `check_model`.

    Returns:
        The rows sorted by family, with the date, total seconds, environment and settings.

    Raises:
        ValueError: an unknown module or model name (with the closest ones) or a bad setting, before anything runs.
    """
    jobs = check.integer("jobs", jobs, 1)
    threads = check.integer("threads", threads, 1)
    timeout = check.positive_float("timeout", timeout)
    memory_limit_gb = check.positive_float("memory_limit_gb", memory_limit_gb)
    target_macs = check.fraction("target_macs", target_macs)
    todo = list(cases or ())
    if modules or models or not todo:
        todo = cases_for(modules, models) + todo
    settings = {"jobs": jobs, "threads": threads, "timeout": timeout, "memory_limit_gb": memory_limit_gb,
                "target_macs": target_macs, "cases": len(todo)}
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    environment = _environment()
    start = time.perf_counter()

    def one(case: Case) -> CoverageRow:
        return run_child(case, target_macs=target_macs, timeout=timeout, threads=threads,
                         memory_limit_gb=memory_limit_gb)

    rows = _run_all(todo, one, jobs=jobs, progress=progress, on_row=on_row)
    return CoverageReport(rows=by_family(rows), date=date, seconds=round(time.perf_counter() - start, 1),
                          environment=environment, settings=settings)


def _run_all(todo: list[Case], one: Callable[[Case], CoverageRow], *, jobs: int, progress: bool,
             on_row: Callable[[CoverageRow, list[CoverageRow]], None] | None) -> list[CoverageRow]:
    """``one(case)`` for every case, ``jobs`` at a time, under a progress bar naming the running cases."""
    from tqdm.auto import tqdm

    rows: list[CoverageRow] = []
    running: dict[int, str] = {}
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc="coverage", unit="model", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    def step(index: int) -> CoverageRow:
        with lock:
            running[index] = todo[index].name
            bar.set_postfix_str(", ".join(running.values()), refresh=True)
        row = one(todo[index])
        with lock:
            del running[index]
            rows.append(row)
            bar.set_postfix_str(", ".join(running.values()), refresh=False)
            bar.update(1)
            if on_row is not None:
                on_row(row, list(rows))
        return row

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(step, i) for i in range(len(todo))]:
                future.result()
    finally:
        bar.close()
    return rows
