"""A probe set: the probe graphs of one model (and the model itself) in a zip, with a checked manifest.

`write_probe_set` runs on the workstation (it needs ``onnx`` to build the graphs); `read_probe_set` runs on the
device with the standard library only. Every file is listed in ``manifest.json`` with its SHA-256 and size, and
the reader refuses a zip whose files are missing, extra, changed, or larger than stated, before running any.

Examples:
    >>> import tempfile, os
    >>> sig = {"op": "linear", "tokens": [1], "in": 16, "out": 8}
    >>> path = os.path.join(tempfile.mkdtemp(), "probes.zip")
    >>> _ = write_probe_set(path, [("linear-a", sig)], quantum=8, levels=4)
    >>> probes = read_probe_set(path)
    >>> [op["grid"] for op in probes.operators], len(probes.graphs)
    ([{'in': [8, 16], 'out': [8]}], 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = "pfgdf-probes/1"
MANIFEST = "manifest.json"
# Bounds checked before anything is extracted: a probe set is small (graphs of a few hundred bytes, one model).
MAX_FILES = 200_000
MAX_TOTAL_BYTES = 2 * 2**30


class ProbeSetError(ValueError):
    """A probe set that is not one, is incomplete, or was changed after it was written."""


@dataclass
class ProbeSet:
    """A verified probe set: the manifest's operators and model, and the bytes of every file by name."""

    quantum: int
    operators: list[dict[str, Any]]
    model: dict[str, Any] | None
    graphs: dict[str, bytes]
    overhead: dict[str, Any]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_probe_set(
    path: str | os.PathLike, operators: list[tuple[str, dict[str, Any]]], *, quantum: int, levels: int,
    model: tuple[str, bytes, list[int]] | None = None,
) -> Path:
    """Write the probes of ``operators`` (``(signature id, signature)``, duplicates once) and optionally the whole
    ``model`` (``(model id, ONNX bytes, input shape)``) to the zip ``path``, atomically.

    Returns:
        ``path``.
    """
    from pfgdf_plugin._util.io import write_with
    from pfgdf_plugin.measure.probe_graphs import axis_grids, grid_points, overhead_graph, probe_graph

    files: dict[str, bytes] = {"overhead.onnx": overhead_graph()[0]}
    entries = []
    for sig_id, signature in dict(operators).items():
        grids = axis_grids(signature, quantum, levels)
        points = []
        for n, counts in enumerate(grid_points(grids)):
            data, shape = probe_graph(signature, counts)
            name = f"ops/{sig_id}/{n}.onnx"
            files[name] = data
            points.append({"file": name, "input_shape": shape, "counts": counts})
        entries.append({"id": sig_id, "signature": signature, "grid": grids, "points": points})
    manifest: dict[str, Any] = {"schema": SCHEMA, "quantum": quantum, "operators": entries, "model": None,
                                "overhead": {"file": "overhead.onnx", "input_shape": [1]}}
    if model is not None:
        model_id, data, shape = model
        files["model.onnx"] = data
        manifest["model"] = {"id": model_id, "file": "model.onnx", "input_shape": list(shape)}
    manifest["files"] = {name: {"sha256": _digest(data), "bytes": len(data)} for name, data in files.items()}

    def writer(fh: Any) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            for name, data in files.items():
                zf.writestr(name, data)

    return write_with(path, writer)


def read_probe_set(path: str | os.PathLike) -> ProbeSet:
    """Open and verify a probe set written by `write_probe_set`.

    Raises:
        FileNotFoundError: no such file.
        ProbeSetError: not a zip or not a probe set; a file missing, extra, of another size or digest than the
            manifest states; more files or bytes than a probe set may hold.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"probes: no such file: {target}")
    try:
        zf = zipfile.ZipFile(target)
    except zipfile.BadZipFile as err:
        raise ProbeSetError(f"{target}: not a probe set (not a zip file: {err})") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        if len(infos) > MAX_FILES or sum(i.file_size for i in infos.values()) > MAX_TOTAL_BYTES:
            raise ProbeSetError(f"{target}: more than {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes: not a probe set")
        if MANIFEST not in infos:
            raise ProbeSetError(f"{target}: not a probe set (no {MANIFEST})")
        try:
            manifest = json.loads(zf.read(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ProbeSetError(f"{target}: {MANIFEST} is not JSON ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise ProbeSetError(f"{target}: not a probe set of schema {SCHEMA!r}")
        listed = manifest.get("files")
        if not isinstance(listed, dict):
            raise ProbeSetError(f"{target}: {MANIFEST} lists no files")
        present = set(infos) - {MANIFEST}
        if missing := sorted(set(listed) - present):
            raise ProbeSetError(f"{target}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
        if extra := sorted(present - set(listed)):
            raise ProbeSetError(f"{target}: {len(extra)} file(s) not in the manifest, e.g. {extra[0]}")
        graphs = {}
        for name, meta in listed.items():
            if infos[name].file_size != meta.get("bytes"):
                raise ProbeSetError(f"{target}: {name} is {infos[name].file_size} bytes, the manifest says "
                                    f"{meta.get('bytes')}: the probe set was changed")
            data = zf.read(name)
            if _digest(data) != meta.get("sha256"):
                raise ProbeSetError(f"{target}: {name} does not match its SHA-256 in the manifest: the probe set "
                                    "was changed")
            graphs[name] = data
    try:
        operators = list(manifest["operators"])
        for op in operators:
            for point in op["points"]:
                if point["file"] not in graphs:
                    raise KeyError(point["file"])
        model, overhead = manifest.get("model"), manifest["overhead"]
        for item in (model, overhead):
            if item is not None and item["file"] not in graphs:
                raise KeyError(item["file"])
        return ProbeSet(quantum=int(manifest["quantum"]), operators=operators, model=model, graphs=graphs,
                        overhead=overhead)
    except (KeyError, TypeError, ValueError) as err:
        raise ProbeSetError(f"{target}: {MANIFEST} is inconsistent ({type(err).__name__}: {err})") from None
