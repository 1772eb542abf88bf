"""A latency lookup table: per operator signature, measured milliseconds on a grid of channel counts.

The table belongs to one runtime: the CPU (model and ISA flags), the ONNX Runtime version and the intra-op
thread count (`TableKey`). Each entry holds one operator (a conv, a linear layer, an attention core) at its real
input shape, measured at every point of a grid of channel counts that are multiples of the table's ``step``
(ONNX Runtime's channel block on x86: a count between two multiples runs as the next multiple up, padded).
`LatencyTable.lookup` rounds a count up to the step, exactly as the runtime does, and interpolates linearly
only between measured grid points. ``models`` holds whole-model latencies measured with the same settings: the
part of a model that pruning does not change is that latency minus its operators' sum (`constant_ms`).

This module needs only the standard library: the device probe (`pfgdf_plugin.device_probe`) runs without torch.

Examples:
    >>> key = TableKey(cpu="Example CPU", machine="x86_64", isa=("avx2",), onnxruntime="1.0", threads=1)
    >>> table = LatencyTable(key=key, step=8, source="local")
    >>> table.add("conv-a", {"op": "conv"}, {"in": [8, 16], "out": [8, 16]}, [[1.0, 2.0], [3.0, 4.0]])
    >>> table.lookup("conv-a", {"in": 16, "out": 12})   # 12 runs as 16 (the step): the measured 4.0
    4.0
    >>> table.lookup("conv-a", {"in": 12, "out": 16})
    4.0
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfgdf_plugin.measure.platform import cpu_flags, cpu_name

SCHEMA = "pfgdf-latency-table/1"
# A table file above this size is refused before it is parsed.
MAX_TABLE_BYTES = 64 * 2**20
# Sources: "local" tables are built by prune() on the machine they describe; "device" tables by the device probe
# on the deployment device, on purpose, so they are used for that device wherever prune() runs.
SOURCES = ("local", "device")
# ISA flags that change which ONNX Runtime CPU kernels run (the rest of /proc/cpuinfo's flags do not key a table).
KEY_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "asimd", "asimddp",
             "sve", "i8mm")


class TableError(ValueError):
    """A latency table that is corrupt, incomplete, or measured for another runtime than the one asked for."""


@dataclass(frozen=True)
class TableKey:
    """The runtime a table was measured on: CPU model, machine, ISA flags, ONNX Runtime version, threads."""

    cpu: str
    machine: str
    isa: tuple[str, ...]
    onnxruntime: str
    threads: int

    def differences(self, other: TableKey) -> list[str]:
        """The fields in which ``other`` differs, as ``"name: ours vs theirs"``."""
        out = []
        for name in ("cpu", "machine", "isa", "onnxruntime", "threads"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {_show(a)} vs {_show(b)}")
        return out

    def describe(self) -> str:
        plural = "s" if self.threads != 1 else ""
        return (f"{self.cpu} ({self.machine}; {' '.join(self.isa) or 'no key ISA flags'}), onnxruntime "
                f"{self.onnxruntime}, {self.threads} thread{plural}")

    def digest(self) -> str:
        """A short stable name for the key (the cache file name)."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "machine": self.machine, "isa": list(self.isa), "onnxruntime": self.onnxruntime,
                "threads": self.threads}


def _show(value: object) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def this_machine(threads: int) -> TableKey:
    """The key of this machine's runtime at ``threads`` intra-op threads (imports onnxruntime for its version)."""
    import onnxruntime

    flags = cpu_flags()
    return TableKey(cpu=cpu_name(), machine=platform.machine(), isa=tuple(f for f in KEY_FLAGS if f in flags),
                    onnxruntime=onnxruntime.__version__, threads=int(threads))


def signature_id(signature: dict[str, Any]) -> str:
    """A stable name for an operator signature: its kind and a digest of its canonical JSON."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"))
    return f"{signature.get('op', 'op')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass
class Entry:
    """One operator: its signature, the grid of channel counts per axis, and milliseconds at every grid point
    (nested lists, first axis outermost)."""

    signature: dict[str, Any]
    grid: dict[str, list[int]]
    ms: Any

    def value(self, counts: dict[str, int]) -> float:
        """Milliseconds at ``counts`` (one per axis): rounded up onto the grid's step, interpolated between
        grid points, clamped to the measured range."""
        axes = list(self.grid)
        points = []
        for axis in axes:
            grid = self.grid[axis]
            c = min(max(counts[axis], grid[0]), grid[-1])
            i = bisect.bisect_left(grid, c)
            if grid[i] == c or i == 0:
                points.append([(i, 1.0)])
            else:
                lo, hi = grid[i - 1], grid[i]
                w = (c - lo) / (hi - lo)
                points.append([(i - 1, 1.0 - w), (i, w)])
        total = 0.0
        for combo in _product(points):
            v, weight = self.ms, 1.0
            for i, w in combo:
                v = v[i]
                weight *= w
            total += weight * float(v)
        return total


def _product(lists: list[list[tuple[int, float]]]) -> list[list[tuple[int, float]]]:
    out: list[list[tuple[int, float]]] = [[]]
    for options in lists:
        out = [[*prefix, o] for prefix in out for o in options]
    return out


@dataclass
class LatencyTable:
    """Measured operator and model latencies for one runtime (`TableKey`).

    Attributes:
        key: the runtime measured.
        step: channel counts the allocation keeps (ONNX Runtime's channel block there).
        source: ``"local"`` (built by prune() here) or ``"device"`` (written by the device probe).
        operators: `Entry` per signature id.
        models: whole-model latency per model id: ``{"ms": ..., "operators": [signature ids]}``.
        created: when the table was first written (ISO 8601, UTC).
        overhead_ms: the runtime's cost of one ``run`` call, included in every operator's measurement (a
            model pays it once, not once per operator).
    """

    key: TableKey
    step: int
    source: str = "local"
    operators: dict[str, Entry] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    overhead_ms: float = 0.0

    def add(self, sig_id: str, signature: dict[str, Any], grid: dict[str, list[int]], ms: Any) -> None:
        """Record one operator's measurements (replacing an earlier entry for the same signature)."""
        self.operators[sig_id] = Entry(signature, {a: [int(c) for c in g] for a, g in grid.items()}, ms)

    def lookup(self, sig_id: str, counts: dict[str, int]) -> float:
        """Milliseconds of operator ``sig_id`` with ``counts`` channels per axis, rounded up to the step."""
        entry = self.operators[sig_id]
        rounded = {}
        for axis, c in counts.items():
            full = entry.grid[axis][-1]
            rounded[axis] = c if c >= full else min(full, self.step * math.ceil(c / self.step))
        return entry.value(rounded)

    def missing(self, sig_ids: list[str]) -> list[str]:
        return [s for s in dict.fromkeys(sig_ids) if s not in self.operators]

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "key": self.key.as_dict(),
            "step": self.step,
            "source": self.source,
            "created": self.created,
            "overhead_ms": self.overhead_ms,
            "operators": {k: {"signature": e.signature, "grid": e.grid, "ms": e.ms} for k, e in self.operators.items()},
            "models": self.models,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically (a temporary file renamed over ``path``)."""
        from pfgdf_plugin._util.io import write_text

        return write_text(path, json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by `save`; plain JSON, nothing is executed.

        Raises:
            FileNotFoundError: no such file.
            TableError: not a latency table of this schema, or an inconsistent one (the message names the part).
        """
        target = Path(path)
        if target.stat().st_size > MAX_TABLE_BYTES:
            raise TableError(f"{target}: {target.stat().st_size} bytes is above the {MAX_TABLE_BYTES} a table may be")
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TableError(f"{target}: not a latency table (not JSON: {err})") from err
        try:
            return cls.from_dict(data)
        except TableError as err:
            raise TableError(f"{target}: {err}") from None

    @classmethod
    def from_dict(cls, data: Any) -> LatencyTable:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise TableError(f"not a latency table: schema must be {SCHEMA!r}, got {found!r}")
        try:
            k = data["key"]
            key = TableKey(cpu=str(k["cpu"]), machine=str(k["machine"]), isa=tuple(str(f) for f in k["isa"]),
                           onnxruntime=str(k["onnxruntime"]), threads=int(k["threads"]))
            step, source = int(data["step"]), str(data["source"])
            table = cls(key=key, step=step, source=source, created=str(data.get("created", "")),
                        models=dict(data.get("models", {})), overhead_ms=float(data.get("overhead_ms", 0.0)))
            for sig_id, e in dict(data["operators"]).items():
                table.add(str(sig_id), dict(e["signature"]), dict(e["grid"]), e["ms"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise TableError(f"corrupt latency table ({type(err).__name__}: {err})") from None
        if step < 1 or key.threads < 1:
            raise TableError(f"corrupt latency table: step {step} and threads {key.threads} must be >= 1")
        if not 0 <= table.overhead_ms < 1e3:
            raise TableError(f"corrupt latency table: overhead_ms must be in [0, 1000), got {table.overhead_ms}")
        if source not in SOURCES:
            raise TableError(f"corrupt latency table: source must be one of {', '.join(SOURCES)}, got {source!r}")
        for sig_id, entry in table.operators.items():
            _check_entry(sig_id, entry)
        return table


def _check_entry(sig_id: str, entry: Entry) -> None:
    """Grids strictly increasing positive ints; ``ms`` a nested list of that shape of finite positive numbers."""
    def bad(why: str) -> TableError:
        return TableError(f"corrupt latency table: operator {sig_id}: {why}")

    if not entry.grid:
        raise bad("no grid")
    for axis, grid in entry.grid.items():
        if not grid or grid[0] < 1 or any(b <= a for a, b in itertools.pairwise(grid)):
            raise bad(f"grid {axis!r} must be increasing positive channel counts, got {grid}")
    level = [entry.ms]
    for axis, grid in entry.grid.items():
        nxt = []
        for v in level:
            if not isinstance(v, list) or len(v) != len(grid):
                raise bad(f"ms must have {len(grid)} values along {axis!r}")
            nxt.extend(v)
        level = nxt
    for v in level:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise bad(f"every latency must be a finite positive number of milliseconds, got {v!r}")


def check_key(table: LatencyTable, expected: TableKey, *, what: str, insist: bool = False) -> list[str]:
    """The ways ``table`` differs from ``expected``; raises `TableError` on any unless ``insist``.

    Examples:
        >>> a = TableKey("A", "x86_64", ("avx2",), "1.0", 1)
        >>> check_key(LatencyTable(a, 8), TableKey("B", "x86_64", ("avx2",), "1.0", 1), what="t", insist=True)
        ['cpu: A vs B']
    """
    diffs = table.key.differences(expected)
    if diffs and not insist:
        raise TableError(
            f"{what} was measured on {table.key.describe()}, not on {expected.describe()} "
            f"({'; '.join(diffs)}): its latencies do not hold here. Build a table for this runtime, or insist "
            "(insist_table=True, --insist-table) to use it anyway"
        )
    return diffs


def cache_dir() -> Path:
    """Where tables built here are cached: ``$PFGDF_CACHE_DIR`` or ``~/.cache/pfgdf_plugin``, then ``latency/``."""
    base = os.environ.get("PFGDF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pfgdf_plugin")
    return Path(base) / "latency"
