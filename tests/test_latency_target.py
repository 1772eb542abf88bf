"""Latency targets (issue 14): tables, the search on an injected table, the local cache, the torch-free probe.

Latencies here come from tables built in the test (a known function of the channel counts), never from timing:
only the cache and device-probe tests measure anything, and they assert structure alone.
"""

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin import device_probe
from pfgdf_plugin.measure import profiling
from pfgdf_plugin.measure.operators import model_id, operator_sites
from pfgdf_plugin.measure.probe_graphs import axis_grids, grid_points, nest
from pfgdf_plugin.measure.table import LatencyTable, TableError, TableKey, check_key, this_machine
from pfgdf_plugin.pruning.api import prune
from pfgdf_plugin.pruning.errors import TargetOutOfReachError
from tests.conftest import state_hash

REPO = Path(__file__).resolve().parents[1]
FOREIGN = TableKey("Test Board CPU", "aarch64", ("asimd",), "0.0-test", 1)
X = torch.randn(1, 3, 32, 32)


def fake_ms(sig, counts):
    """The injected latency: proportional to the product of the channel axes and the output area."""
    area = sig["hw"][0] * sig["hw"][1] / (sig["stride"][0] * sig["stride"][1] * 16) if sig["op"] == "conv" else 1
    return 1e-3 * math.prod(counts.values()) * area


def site_ms(site, counts=None):
    """fake_ms of a site at ``counts`` (default: its layers' current channel counts, read off its signature)."""
    return fake_ms(site.signature, counts or {a: site.signature[a] for a in site.axes})


@pytest.fixture(scope="module")
def resnet(one_torch_thread):
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=10).eval()


def injected(model, *, source="device", key=FOREIGN, constant=0.1):
    """A table for ``model`` at X: fake_ms on grids of step 8, and the whole model = operators + a constant."""
    sites = operator_sites(model, X)
    table = LatencyTable(key=key, step=8, source=source)
    for s in sites:
        grids = axis_grids(s.signature, quantum=8, levels=6)
        table.add(s.id, s.signature, grids, nest([fake_ms(s.signature, c) for c in grid_points(grids)], grids))
    operators = sum(site_ms(s) for s in sites)
    table.models[model_id(model, sites)] = {"ms": operators * (1 + constant)}
    return table, operators * constant


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


# --- the table ------------------------------------------------------------------------------------------------

def small_table():
    table = LatencyTable(key=TableKey("A", "x86_64", ("avx2",), "1.0", 1), step=8, source="local")
    table.add("conv-a", {"op": "conv"}, {"in": [8, 32], "out": [16, 44]}, [[1.0, 2.0], [5.0, 10.0]])
    return table


def test_lookup_rounds_up_to_the_step_and_interpolates():
    table = small_table()
    # in 13 -> 16 (w = 8/24 toward 32), out 20 -> 24 (w = 8/28 toward 44): bilinear by hand.
    wi, wo = 8 / 24, 8 / 28
    hand = (1 - wi) * ((1 - wo) * 1.0 + wo * 2.0) + wi * ((1 - wo) * 5.0 + wo * 10.0)
    assert table.lookup("conv-a", {"in": 13, "out": 20}) == pytest.approx(hand, rel=1e-12)
    assert table.lookup("conv-a", {"in": 32, "out": 41}) == 10.0  # 41 -> 48 is above the full 44: runs as 44
    assert table.lookup("conv-a", {"in": 1, "out": 9}) == 1.0  # 1 -> 8, 9 -> 16: the first grid point
    assert table.lookup("conv-a", {"in": 24, "out": 44}) == pytest.approx(2.0 + 8.0 * 16 / 24)


def test_save_load_round_trip_is_complete_json(tmp_path):
    table = small_table()
    table.models["model-x"] = {"ms": 12.5, "input_shape": [1, 3, 32, 32]}
    path = table.save(tmp_path / "t.json")
    assert json.loads(path.read_text())["schema"] == "pfgdf-latency-table/1"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temporary file left behind
    back = LatencyTable.load(path)
    assert back.as_dict() == table.as_dict() and back.key == table.key
    assert back.lookup("conv-a", {"in": 13, "out": 20}) == table.lookup("conv-a", {"in": 13, "out": 20})


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: "{not json", "not JSON"),
    (lambda d: {**d, "schema": "other/1"}, "schema must be 'pfgdf-latency-table/1', got 'other/1'"),
    (lambda d: d["operators"]["conv-a"].update(ms=[[1.0, 2.0], [5.0]]), "conv-a: ms must have 2 values along 'out'"),
    (lambda d: d["operators"]["conv-a"].update(ms=[[1.0, -2.0], [5.0, 10.0]]), "finite positive number.*-2.0"),
    (lambda d: d["operators"]["conv-a"]["grid"].update(out=[16, 16]), "grid 'out' must be increasing"),
    (lambda d: d.pop("key") and None, "corrupt latency table \\(KeyError"),
])
def test_load_refuses_a_corrupt_table(tmp_path, corrupt, message):
    data = small_table().as_dict()
    out = corrupt(data)
    data = out if out is not None else data
    path = tmp_path / "t.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(TableError, match=message) as err:
        LatencyTable.load(path)
    assert str(path) in str(err.value)


def test_key_digest_is_stable_and_covers_every_field():
    key = TableKey("A", "x86_64", ("avx2", "fma"), "1.0", 1)
    assert key.digest() == "c165c546a7d048a2"  # the cache file name: must not change between releases
    assert TableKey("A", "x86_64", ("avx2", "fma"), "1.0", 1).digest() == key.digest()
    others = [TableKey("B", "x86_64", ("avx2", "fma"), "1.0", 1), TableKey("A", "aarch64", ("avx2", "fma"), "1.0", 1),
              TableKey("A", "x86_64", ("avx2",), "1.0", 1), TableKey("A", "x86_64", ("avx2", "fma"), "1.1", 1),
              TableKey("A", "x86_64", ("avx2", "fma"), "1.0", 2)]
    assert len({key.digest(), *(k.digest() for k in others)}) == 6


def test_check_key_refuses_another_runtime_and_lists_differences_when_insisting():
    table = small_table()
    other = TableKey("A", "x86_64", ("avx2",), "1.0", 4)
    with pytest.raises(TableError, match=r"threads: 1 vs 4.*insist_table=True"):
        check_key(table, other, what="the table")
    assert check_key(table, other, what="the table", insist=True) == ["threads: 1 vs 4"]
    assert check_key(table, TableKey("B", "x86_64", (), "2.0", 1), what="t", insist=True) == \
        ["cpu: A vs B", "isa: avx2 vs ", "onnxruntime: 1.0 vs 2.0"]
    assert check_key(table, table.key, what="the table") == []


# --- prune() on an injected table -------------------------------------------------------------------------------

def test_speedup_target_met_on_an_injected_table(resnet):
    table, constant = injected(resnet)
    before_state, whole = state_hash(resnet), table.models[next(iter(table.models))]["ms"]
    result = prune(resnet, X, target_speedup=2.0, latency_table=table)
    lat = result.latency
    assert lat.measured_before_ms is None and lat.measured_after_ms is None  # a device table: nothing timed here
    assert lat.predicted_before_ms == pytest.approx(whole)
    # Independently: the pruned model's own layers under the same latency function.
    after = sum(site_ms(s) for s in operator_sites(result.model, X)) + constant
    assert lat.predicted_after_ms == pytest.approx(after, rel=1e-9)
    assert whole / after == pytest.approx(2.0, rel=0.03)
    assert result.extra["target_met"] is True and result.extra["round_to"] == table.step
    pruned = [c for c in result.layers if c.out_after != c.out_before]
    assert pruned and all(c.out_after % table.step == 0 for c in pruned)
    assert all(c.in_after % table.step == 0 or c.in_after == c.in_before for c in result.layers)
    again = prune(resnet, X, target_speedup=2.0, latency_table=table)
    assert [(c.in_after, c.out_after) for c in again.layers] == [(c.in_after, c.out_after) for c in result.layers]
    assert state_hash(resnet) == before_state


def test_millisecond_target_on_an_injected_table(resnet):
    table, constant = injected(resnet)
    whole = table.models[next(iter(table.models))]["ms"]
    result = prune(resnet, X, target_latency_ms=whole / 2.5, latency_table=table)
    after = sum(site_ms(s) for s in operator_sites(result.model, X)) + constant
    assert result.latency.goal == "ms" and result.latency.predicted_after_ms == pytest.approx(after, rel=1e-9)
    assert after == pytest.approx(whole / 2.5, rel=0.03)


def test_any_importance_allocates_to_a_latency_target(resnet):
    """Torch-Pruning's own L1 magnitude as the criterion, and PFGDF's allocation with L1 choosing channels: both
    meet the target on the same table."""
    table, constant = injected(resnet)
    whole = table.models[next(iter(table.models))]["ms"]
    l1 = tp.importance.MagnitudeImportance(p=1)
    for kwargs in ({"importance": l1}, {"rank_by": l1}):
        result = prune(resnet, X, target_speedup=1.8, latency_table=table, **kwargs)
        after = sum(site_ms(s) for s in operator_sites(result.model, X)) + constant
        assert whole / after == pytest.approx(1.8, rel=0.03), kwargs
        assert "Magnitude" in (result.criterion if "importance" in kwargs else result.ranked_by)


def test_unreachable_speedup_names_the_best_reachable(resnet):
    table, constant = injected(resnet)
    whole, before = table.models[next(iter(table.models))]["ms"], state_hash(resnet)
    # Everything pruned to one step of 8 channels; the stem's 3 inputs and the classifier's 10 outputs stay.
    sites = operator_sites(resnet, X)
    floor = sum(site_ms(s, {a: s.signature[a] if s.signature[a] < 8 or (s.signature["op"], a) == ("linear", "out")
                            else 8 for a in s.axes}) for s in sites) + constant
    with pytest.raises(TargetOutOfReachError, match=rf"best reachable is a {whole / floor:.2f}x speed-up"):
        prune(resnet, X, target_speedup=50, latency_table=table)
    assert state_hash(resnet) == before


def _drop_operator(table):
    # resnet10t has 15 operator sites but 14 distinct signatures (layer1's two 64->64 convs are alike).
    table.operators.pop(next(iter(table.operators)))


@pytest.mark.parametrize("change, kwargs, error, message", [
    (None, {"threads": 2}, ValueError, "threads=2 but latency_table was measured with 1 thread"),
    (_drop_operator, {}, TableError, "the latency table lacks 1 of this model's 14 operators"),
    (lambda t: t.models.clear(), {}, TableError, "no whole-model latency for this model"),
    (lambda t: setattr(t, "source", "local"), {}, TableError, "was measured on Test Board CPU.*insist_table=True"),
    (None, {"target_speedup": None, "target_latency_ms": 1e6}, ValueError, "target_latency_ms=1e\\+06 is not below"),
    (None, {"target_speedup": 1.0}, ValueError, "target_speedup must be a number > 1"),
    (None, {"target_speedup": 0.5}, ValueError, "target_speedup must be a number > 1"),
    (None, {"target_macs": 0.5}, ValueError, "give exactly one of.*got target_macs, target_speedup"),
])
def test_bad_latency_targets_leave_the_model_untouched(resnet, change, kwargs, error, message):
    table, _ = injected(resnet)
    if change is not None:
        change(table)
    before = state_hash(resnet)
    with pytest.raises(error, match=message):
        prune(resnet, X, **{"target_speedup": 2.0, "latency_table": table, **kwargs})
    assert state_hash(resnet) == before


def test_a_foreign_local_table_is_used_when_insisting(resnet):
    table, _ = injected(resnet, source="local")
    result = prune(resnet, X, target_speedup=2.0, latency_table=table, insist_table=True)
    assert result.latency.measured_after_ms is None and result.latency.predicted_speedup == pytest.approx(2, rel=0.03)


# --- this machine's cached table (measures, so only structure is asserted) ----------------------------------------

def test_local_table_is_cached_by_key_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("PFGDF_CACHE_DIR", str(tmp_path))
    model = tiny()
    sites = operator_sites(model, X)
    mid = model_id(model, sites)
    table, path = profiling.local_table(model, X, sites, mid, threads=1, levels=2)
    assert path == tmp_path / "latency" / f"{this_machine(1).digest()}.json" and path.exists()
    assert table.missing([s.id for s in sites]) == [] and mid in table.models and table.source == "local"
    assert LatencyTable.load(path).as_dict() == table.as_dict()

    def no_timing(*args, **kwargs):
        raise AssertionError("measured again although the cache holds everything")

    with monkeypatch.context() as m:
        m.setattr(device_probe, "measure_points", no_timing)
        m.setattr(device_probe, "time_interleaved", no_timing)
        again, _ = profiling.local_table(model, X, sites, mid, threads=1, levels=2)
    assert again.as_dict() == table.as_dict()

    stale = LatencyTable.load(path)
    stale.key = TableKey("Another CPU", table.key.machine, table.key.isa, table.key.onnxruntime, 1)
    stale.save(path)
    with pytest.warns(UserWarning, match=r"cpu: Another CPU vs .*measuring a new table in its place"):
        fresh, _ = profiling.local_table(model, X, sites, mid, threads=1, levels=2)
    assert fresh.key == this_machine(1) and LatencyTable.load(path).key == this_machine(1)


# --- the device probe, without torch -----------------------------------------------------------------------------

NO_TORCH = """
import os, runpy, sys
tried = []
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            tried.append(name)
            raise ImportError(f"torch is not installed here ({name})")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["device_probe", *sys.argv[1:]]
try:
    runpy.run_module("pfgdf_plugin.device_probe", run_name="__main__")
finally:
    if tried:  # even an import guarded by try/except counts
        print("imported torch:", tried, file=sys.stderr)
        os._exit(3)
"""


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    path = tmp_path_factory.mktemp("probes") / "probes.zip"
    return profiling.write_model_probes(tiny(), X, path, levels=2)


def test_device_probe_runs_without_torch(probes, tmp_path):
    out = tmp_path / "t.json"
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(probes), "--threads", "1", "--output", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = LatencyTable.load(out)
    manifest = json.loads(zipfile.ZipFile(probes).read("manifest.json"))
    assert table.source == "device" and table.key.threads == 1
    assert sorted(table.operators) == sorted(op["id"] for op in manifest["operators"])
    assert all(table.operators[op["id"]].grid == op["grid"] for op in manifest["operators"])
    assert list(table.models) == [manifest["model"]["id"]] and table.models[manifest["model"]["id"]]["ms"] > 0


@pytest.mark.parametrize("tamper", ["change", "delete"])
def test_device_probe_refuses_a_tampered_probe_set(probes, tmp_path, capsys, tamper):
    with zipfile.ZipFile(probes) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    victim = next(n for n in members if n.endswith(".onnx") and n.startswith("ops/"))
    if tamper == "change":
        members[victim] = bytes(b ^ 0xFF for b in members[victim])  # same size, other bytes
    else:
        del members[victim]
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    out = tmp_path / "t.json"
    assert device_probe.main([str(bad), "--threads", "1", "--output", str(out), "--no-progress"]) == 2
    assert victim in capsys.readouterr().err and not out.exists()


def test_device_probe_rejects_zero_threads(probes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        device_probe.main([str(probes), "--threads", "0", "--output", str(tmp_path / "t.json")])
    assert exit_.value.code == 2 and "--threads must be an integer in [1, " in capsys.readouterr().err


@pytest.mark.parametrize("module", ["pfgdf_plugin.measure.profiling", "pfgdf_plugin.allocation.latency"])
def test_latency_modules_import_first(module):
    """Each module imports in a fresh interpreter (doctest collection imports them in file order)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-600:]
