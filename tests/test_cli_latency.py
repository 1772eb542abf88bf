"""The command-line side of latency targets: ``pfgdf profile probes`` -> device probe -> ``pfgdf prune
--target-speedup --latency-table``, ``pfgdf profile table``, and every bad latency option refused by name.

Latencies asserted come from the tables themselves (a table re-keyed as another device is never measured here),
never from timing.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pfgdf_plugin import device_probe
from pfgdf_plugin.cli import _names, main
from pfgdf_plugin.cli import profile as cli_profile
from pfgdf_plugin.measure.probe_set import read_probe_set
from pfgdf_plugin.measure.table import LatencyTable, TableKey

MODEL = ["--model", "resnet10t", "--input-size", "32", "--num-classes", "10"]
DEVICE_CPU = "Test Device CPU"
PROBES = "my probes.zip"  # a space: the printed device command must quote it


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PFGDF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """``pfgdf profile probes`` then the device probe, once: the probe set ``my probes.zip`` (and what the command
    printed, in ``probes.out``), this machine's table from it ``t.json``, and ``d.json``, a copy of that table
    re-keyed as another device (so prune predicts only: nothing here can time that device)."""
    root = tmp_path_factory.mktemp("probed")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("PFGDF_CACHE_DIR", str(root / "cache"))
        assert main(["profile", "probes", *MODEL, "--levels", "2", "--output", str(root / PROBES), "--quiet"]) == 0
    (root / "probes.out").write_text(printed.getvalue())
    assert device_probe.main([str(root / PROBES), "--threads", "1", "--output", str(root / "t.json"),
                              "--no-progress"]) == 0
    data = json.loads((root / "t.json").read_text())
    data["key"]["cpu"] = DEVICE_CPU
    (root / "d.json").write_text(json.dumps(data))
    return root


# ---------------------------------------------------------------- help


def test_help_lists_profile(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "profile" in out and "latency tables for a latency target" in out


@pytest.mark.parametrize("argv, expected", [
    (["profile", "probes", "--help"], ["--output PROBES.zip", "--quantum", "--levels", "pfgdf_plugin.device_probe"]),
    (["profile", "table", "--help"], ["--output TABLE.json", "--threads N", "the cache that `pfgdf prune` uses"]),
    (["prune", "--help"], ["--target-speedup X", "--target-latency-ms MS", "--latency-table TABLE.json",
                           "--insist-table", "latency target is measured and predicted for"]),
])
def test_help_exits_0_and_names_the_options(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in expected:
        assert text in out, text


def test_profile_help_imports_nothing_heavy():
    code = "import sys; from pfgdf_plugin.cli import main; main(['profile', 'probes', '--help'])"
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in run.stderr.splitlines() if "|" in line}
    assert "argparse" in imported
    assert not imported & {"torch", "timm", "onnx", "onnxruntime", "torch_pruning"}


def test_static_defaults_match_their_owners():
    from pfgdf_plugin.measure import profiling

    assert _names.PROFILE_LEVELS == profiling.LEVELS
    assert cli_profile.QUANTUM == inspect.signature(profiling.write_model_probes).parameters["quantum"].default


# ---------------------------------------------------------------- the round trip


def test_probes_print_counts_and_the_device_command(probed):
    out, printed = probed / PROBES, (probed / "probes.out").read_text()
    probes = read_probe_set(out)
    graphs = sum(len(op["points"]) for op in probes.operators)
    assert f"wrote {out}: {len(probes.operators)} operators ({graphs} probe graphs) and the whole model" in printed
    assert probes.model["input_shape"] == [1, 3, 32, 32]
    # --levels 2: at most 2 grid points per axis
    assert all(len(g) <= 2 for op in probes.operators for g in op["grid"].values())
    assert f"python -m pfgdf_plugin.device_probe '{out}' --threads 1 --output table.json" in printed
    assert ("pfgdf prune --model resnet10t --num-classes 10 --input-size 3x32x32 --target-speedup 2 "
            "--latency-table table.json --threads 1") in printed


def test_device_table_round_trip_predicts_the_target(probed, tmp_path, capsys):
    device = probed / "d.json"
    table = LatencyTable.load(device)
    out, report = tmp_path / "m.pt", tmp_path / "r.json"
    code = main(["prune", *MODEL, "--target-speedup", "1.5", "--latency-table", str(device), "--output", str(out),
                 "--report", str(report), "--quiet"])
    printed = capsys.readouterr()
    if code != 0:  # the only acceptable failure: the target is out of reach, said clearly
        assert "out of reach" in printed.err and "speed-up" in printed.err, printed.err
        return
    assert out.is_file()
    data = json.loads(report.read_text())
    latency = data["latency"]
    assert latency["goal"] == "speedup" and latency["value"] == 1.5 and latency["threads"] == 1
    assert abs(latency["predicted_speedup"] / 1.5 - 1) <= 0.05
    # the unpruned prediction is the whole-model latency the device measured (the table's only model)
    (whole,) = [m["ms"] for m in table.models.values()]
    assert latency["predicted_before_ms"] == pytest.approx(whole, rel=1e-12)
    assert latency["measured_before_ms"] is None and latency["measured_speedup"] is None
    assert latency["corrections"] == 0
    assert latency["table"].endswith(f"; device table {device}") and DEVICE_CPU in latency["table"]
    assert data["target"] == {"kind": "latency", "keep": pytest.approx(1 / 1.5, rel=1e-12)}
    assert data["target_met"] is True
    # channel counts stay at the table's step unless the group was not pruned
    for g in data["groups"]:
        assert g["channels_after"] % table.step == 0 or g["channels_after"] == g["channels_before"], g
    assert any(g["channels_after"] < g["channels_before"] for g in data["groups"])
    block = printed.out[printed.out.index("latency on ONNX Runtime (CPU, 1 thread)"):]
    assert f"not measured here: table from {table.key.describe()}" in block
    assert f"predicted    {latency['predicted_before_ms']:.3f} ms -> {latency['predicted_after_ms']:.3f} ms" in block
    assert f"corrections  0\n  table        {latency['table']}" in block


def test_table_of_this_machine_is_measured_here(probed, tmp_path, capsys):
    """The brief's command as written: a table of this machine, so prune also times both models here; only the
    report's structure is asserted (the measured correction moves the prediction)."""
    out, report = tmp_path / "m.pt", tmp_path / "r.json"
    code = main(["prune", *MODEL, "--target-speedup", "1.5", "--latency-table", str(probed / "t.json"),
                 "--output", str(out), "--report", str(report), "--quiet"])
    printed = capsys.readouterr()
    if code != 0:
        assert "out of reach" in printed.err, printed.err
        return
    assert out.is_file()
    latency = json.loads(report.read_text())["latency"]
    for name in ("predicted_before_ms", "predicted_after_ms", "measured_before_ms", "measured_after_ms"):
        assert isinstance(latency[name], float) and latency[name] > 0, name
    assert latency["measured_speedup"] == pytest.approx(latency["measured_before_ms"] / latency["measured_after_ms"])
    assert isinstance(latency["corrections"], int) and 0 <= latency["corrections"] <= 4
    assert latency["table"].endswith(f"; device table {probed / 't.json'}")
    assert "not measured here" not in printed.out
    assert f"({latency['measured_speedup']:.2f}x)" in printed.out


def test_profile_table_matches_the_probe_set(probed, tmp_path, capsys):
    out = tmp_path / "table.json"
    assert main(["profile", "table", *MODEL, "--levels", "2", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    table = LatencyTable.load(out)
    probes = read_probe_set(probed / PROBES)
    # both commands describe the same operators and the same model id
    assert set(table.operators) == {op["id"] for op in probes.operators}
    assert set(table.models) == {probes.model["id"]}
    assert table.source == "local" and table.key.threads == 1
    cached = tmp_path / "cache" / "latency" / f"{table.key.digest()}.json"
    assert f"cached in {cached}" in printed and cached.is_file()
    assert LatencyTable.load(cached).as_dict() == table.as_dict()


def test_a_table_of_another_model_is_refused_by_name(probed, tmp_path, capsys):
    out = tmp_path / "m.pt"
    code = main(["prune", "--model", "resnet10t", "--input-size", "32", "--num-classes", "7", "--target-speedup",
                 "1.5", "--latency-table", str(probed / "d.json"), "--output", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "pfgdf prune: error:" in err and "has no whole-model latency for this model" in err
    assert "pfgdf profile probes" in err
    assert not out.exists()


@pytest.mark.parametrize("target, message", [
    (["--target-speedup", "50"], "the latency target (keep 2.0% of the latency, a 50.00x speed-up) is out of reach"),
    (["--target-latency-ms", "1000"], "target_latency_ms=1000 is not below the unpruned model's"),
])
def test_unreachable_latency_targets_are_errors(probed, tmp_path, capsys, target, message):
    out = tmp_path / "m.pt"
    code = main(["prune", *MODEL, *target, "--latency-table", str(probed / "d.json"), "--output", str(out),
                 "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("pfgdf prune: error: ") and message in err, err
    assert not out.exists()


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("args, message", [
    (["--target-speedup", "1.5", "--target-macs", "0.5"], "argument --target-macs: not allowed with argument "
                                                          "--target-speedup"),
    (["--target-latency-ms", "2", "--alpha", "1"], "argument --alpha: not allowed with argument --target-latency-ms"),
    (["--target-speedup", "1"], "--target-speedup must be a number > 1 (times faster than the unpruned model), "
                                "got 1"),
    (["--target-speedup", "0.5"], "--target-speedup must be a number > 1 (times faster than the unpruned model), "
                                  "got 0.5"),
    (["--target-speedup", "nan"], "--target-speedup must be a finite number, got nan"),
    (["--target-latency-ms", "0"], "--target-latency-ms must be a finite number > 0, got 0"),
    (["--target-speedup", "2", "--threads", "0"], "--threads must be an integer in [1, "),
])
def test_bad_latency_arguments_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", *MODEL, "--output", str(tmp_path / "m.pt"), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def _table(path: Path, threads: int) -> Path:
    key = TableKey(cpu="Some CPU", machine="x86_64", isa=("avx2",), onnxruntime="1.0", threads=threads)
    table = LatencyTable(key=key, step=8, source="device")
    table.add("conv-a", {"op": "conv"}, {"out": [8, 16]}, [1.0, 2.0])
    table.save(path)
    return path


def _corrupt(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: p / "missing.json", ["--target-speedup", "2"], "--latency-table: no file at '{path}'"),
    (lambda p: _corrupt(p, "{not json"), ["--target-speedup", "2"],
     "--latency-table: {path}: not a latency table (not JSON: "),
    (lambda p: _corrupt(p, '{"schema": "pfgdf-latency-table/1", "key": {}}'), ["--target-speedup", "2"],
     "--latency-table: {path}: corrupt latency table (KeyError: 'cpu')"),
    (lambda p: _corrupt(p, "[1, 2]"), ["--target-speedup", "2"],
     "--latency-table: {path}: not a latency table: schema must be 'pfgdf-latency-table/1', got 'list'"),
    (lambda p: _table(p / "t.txt", 1), ["--target-speedup", "2"], "--latency-table must be a .json file, got '{path}'"),
    (lambda p: _table(p / "t.json", 2), ["--target-latency-ms", "1"],
     "--threads 1 but --latency-table {path} was measured with 2 thread(s): pass --threads 2"),
    (lambda p: _table(p / "t.json", 1), ["--alpha", "1"],
     "--latency-table is used with --target-speedup or --target-latency-ms only"),
])
def test_bad_latency_tables_are_refused_before_any_work(tmp_path, capsys, make, extra, message):
    path = make(tmp_path)
    out = tmp_path / "m.pt"
    assert main(["prune", *MODEL, "--output", str(out), "--latency-table", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pfgdf prune: error: "), err
    assert message.format(path=path) in err, err
    assert "building resnet10t" not in err and not out.exists()  # refused before the model was built


def test_insist_table_needs_a_latency_target(tmp_path, capsys):
    assert main(["prune", *MODEL, "--alpha", "1", "--insist-table", "--output", str(tmp_path / "m.pt")]) == 2
    assert "--insist-table is used with --target-speedup or --target-latency-ms only" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["profile", "probes", *MODEL, "--output", "{tmp}/p.txt"], "--output must be a file path ending in .zip"),
    (["profile", "probes", *MODEL, "--output", "{tmp}/dir.zip"], "is a directory; give a file path ending in .zip"),
    (["profile", "table", *MODEL, "--output", "{tmp}/t.zip"], "--output must be a file path ending in .json"),
])
def test_bad_profile_outputs_are_refused(tmp_path, capsys, argv, message):
    (tmp_path / "dir.zip").mkdir()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pfgdf profile: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.zip"]  # nothing written, no cache either


@pytest.mark.parametrize("args, message", [
    (["--levels", "1"], "--levels must be an integer in [2, 64], got 1"),
    (["--quantum", "0"], "--quantum must be an integer in [1, 128], got 0"),
])
def test_bad_profile_arguments_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "probes", *MODEL, "--output", str(tmp_path / "p.zip"), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
