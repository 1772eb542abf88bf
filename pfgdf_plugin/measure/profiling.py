"""Latency tables measured here: this machine's table, cached on disk, extended with a model's missing operators.

The cache holds one table per runtime (`TableKey`: CPU model, ISA flags, ONNX Runtime version, threads) in
`pfgdf_plugin.measure.table.cache_dir`, named by the key's digest. Operators already measured are reused, so a
second prune() of the same model (or of another model sharing layer shapes) measures nothing. Writes are atomic
(a temporary file renamed into place): a crash leaves the previous table.

Examples:
    >>> import os, tempfile, timm, torch
    >>> os.environ["PFGDF_CACHE_DIR"] = tempfile.mkdtemp()
    >>> from pfgdf_plugin.measure.operators import model_id, operator_sites
    >>> model, x = timm.create_model("resnet10t", num_classes=10), torch.randn(1, 3, 32, 32)
    >>> sites = operator_sites(model, x)
    >>> table, path = local_table(model, x, sites, model_id(model, sites), threads=1, levels=3)
    >>> table.missing([s.id for s in sites]), path.exists()
    ([], True)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from pfgdf_plugin.measure.operators import OperatorSite
from pfgdf_plugin.measure.platform import recommended_round_to
from pfgdf_plugin.measure.probe_graphs import axis_grids, grid_points, nest, overhead_graph, probe_graph
from pfgdf_plugin.measure.table import LatencyTable, TableError, cache_dir, check_key, this_machine

# Grid points per axis: dense (every step) for layers of up to LEVELS steps, evenly spread above.
LEVELS = 12


def measure_operators(table: LatencyTable, sites: list[OperatorSite], *, quantum: int, levels: int = LEVELS,
                      progress: bool = False) -> int:
    """Measure every operator of ``sites`` that ``table`` lacks, here, at its key's thread count; how many."""
    from tqdm.auto import tqdm

    from pfgdf_plugin.device_probe import measure_points

    todo = {s.id: s.signature for s in sites if s.id not in table.operators}
    for sig_id, signature in tqdm(todo.items(), desc="latency table", disable=not progress, leave=False):
        grids = axis_grids(signature, quantum, levels)
        ms = measure_points((probe_graph(signature, c) for c in grid_points(grids)), table.key.threads)
        table.add(sig_id, signature, grids, nest(ms, grids))
    return len(todo)


def local_table(model: nn.Module, example_input: torch.Tensor, sites: list[OperatorSite], mid: str, threads: int, *,
                levels: int = LEVELS, progress: bool = False, insist: bool = False) -> tuple[LatencyTable, Path]:
    """This machine's table at ``threads``, with every operator of ``sites`` and the whole ``model`` (as ``mid``)
    measured; read from and saved to the cache.

    Returns:
        The table and its cache file.
    """
    key = this_machine(threads)
    path = cache_dir() / f"{key.digest()}.json"
    table = None
    if path.exists():
        try:
            table = LatencyTable.load(path)
            check_key(table, key, what=f"the cached table {path}", insist=insist)
        except TableError as err:
            warnings.warn(f"{err}; measuring a new table in its place", stacklevel=2)
            table = None
    if table is None:
        from pfgdf_plugin.device_probe import overhead_ms

        table = LatencyTable(key=key, step=recommended_round_to(), source="local")
        table.overhead_ms = overhead_ms(overhead_graph()[0], threads)
    changed = measure_operators(table, sites, quantum=table.step, levels=levels, progress=progress) > 0
    if mid not in table.models:
        from pfgdf_plugin.deploy.onnx import onnx_bytes
        from pfgdf_plugin.device_probe import MODEL_RUNS, MODEL_WARMUP, time_graph

        shape = list(example_input.shape)
        ms = time_graph(onnx_bytes(model, example_input), shape, threads, min_runs=MODEL_RUNS, warmup=MODEL_WARMUP)
        table.models[mid] = {"ms": ms, "input_shape": shape}
        changed = True
    if changed:
        table.save(path)
    return table, path


def write_model_probes(model: nn.Module, example_input: torch.Tensor, output: str | Path, *, quantum: int = 8,
                       levels: int = LEVELS) -> Path:
    """Write the probe set of ``model`` at ``example_input``'s shape (its operators' probe graphs and the model
    itself, exported to ONNX) to the zip ``output``, for ``python -m pfgdf_plugin.device_probe`` on a device.

    ``quantum``: grid channel counts are multiples of it (8 covers both 8- and 16-channel blocks).

    Examples:
        >>> import tempfile, os, timm, torch
        >>> from pfgdf_plugin.measure.probe_set import read_probe_set
        >>> out = os.path.join(tempfile.mkdtemp(), "probes.zip")
        >>> _ = write_model_probes(timm.create_model("resnet10t", num_classes=10), torch.randn(1, 3, 32, 32), out,
        ...                        levels=3)
        >>> probes = read_probe_set(out)
        >>> len(probes.operators) > 5, probes.model["input_shape"]
        (True, [1, 3, 32, 32])
    """
    from pfgdf_plugin.deploy.onnx import onnx_bytes
    from pfgdf_plugin.measure.operators import model_id, operator_sites
    from pfgdf_plugin.measure.probe_set import write_probe_set

    sites = operator_sites(model, example_input)
    if not sites:
        raise ValueError("model has no conv, linear or attention operator a latency table can describe")
    mid = model_id(model, sites)
    return write_probe_set(output, [(s.id, s.signature) for s in sites], quantum=quantum, levels=levels,
                           model=(mid, onnx_bytes(model, example_input), list(example_input.shape)))
