"""The criteria comparison benchmark end to end in its quick setting: JSON schema, accuracy range, MACs targets."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "examples" / "benchmarks" / "bench_criteria.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_criteria", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_schema(tmp_path, capsys):
    bench = _load()
    out, md, png = tmp_path / "c.json", tmp_path / "c.md", tmp_path / "c.png"
    argv = ["--quick", "--data", "digits", "--criteria", "pfgdf-l1", "l1", "--targets", "0.5", "--seeds", "0",
            "--threads", "1", "--output", str(out), "--markdown", str(md), "--plot", str(png)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"config", "criteria", "environment", "unpruned", "runs", "summary"}
    assert report["config"]["data"] == "digits" and report["config"]["criteria"] == ["pfgdf-l1", "l1"]
    assert 0.0 <= report["unpruned"]["accuracy"] <= 1.0
    assert report["unpruned"]["macs"] > 0 and report["unpruned"]["params"] > 0
    assert 0.0 <= report["unpruned"]["acc_finetuned"]["mean"] <= 1.0
    assert {r["criterion"] for r in report["runs"]} == {"pfgdf-l1", "l1"} and len(report["runs"]) == 2
    for run in report["runs"]:
        assert "error" not in run, run
        assert abs(run["macs_kept"] - 0.5) <= 0.02
        assert run["params_after"] < report["unpruned"]["params"]
        for key in ("acc_stale", "acc_recal", "acc_finetuned"):
            assert 0.0 <= run[key] <= 1.0
    assert len(report["summary"]) == 2
    for row in report["summary"]:
        assert row["seeds"] == 1 and row["failed"] == 0
        assert row["acc_finetuned"]["min"] <= row["acc_finetuned"]["mean"] <= row["acc_finetuned"]["max"]
    printed = capsys.readouterr().out
    assert "unpruned (anchor)" in printed and "pfgdf-l1" in printed
    assert md.read_text().startswith("| criterion |")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_target_is_rejected(capsys):
    bench = _load()
    try:
        bench.parse(["--targets", "1.5"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--targets 1.5 was accepted")
    assert "--targets must be a number in (0, 1)" in capsys.readouterr().err
