"""``pfgdf compare``: a quick run end to end (files, JSON schema, MACs targets, latency) and argument checks.

The subcommand is driven through a parser built here with the module's own ``add_parser``, so these tests do
not depend on its registration in ``pfgdf_plugin.cli.COMMANDS``.
"""

import argparse
import dataclasses
import json
import re

import pytest

from pfgdf_plugin.cli import compare as cli_compare
from pfgdf_plugin.criteria import registry
from pfgdf_plugin.studies.compare import CRITERIA, OUTPUTS, CompareConfig, plot, quick_summary, write_outputs
from pfgdf_plugin.studies.compare.summary import stats

CELL_KEYS = {"criterion", "target", "seed", "macs_kept", "params_kept", "macs_after", "params_after", "acc_stale",
             "acc_recal", "acc_finetuned", "prune_seconds", "finetune_seconds", "groups_kept", "latency_ms",
             "latency_p90_ms", "speedup"}


def _args(argv):
    parser = argparse.ArgumentParser(prog="pfgdf")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_compare.add_parser(sub)
    return parser.parse_args(["compare", *argv])


def test_criteria_match_the_requirement():
    assert set(CRITERIA) == {"pfgdf-l1", "pfgdf-l2", "pfgdf-mean", "pfgdf+l1", "pfgdf+fpgm", "pfgdf+chip", "chip",
                             "l1", "l2", "fpgm", "bn-scale", "taylor", "random"}


def test_quick_run_writes_report_table_and_plot(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "out"
    args = _args(["--quick", "--data", "digits", "--criteria", "pfgdf+chip", "l1", "--targets", "0.5", "--seeds", "0",
                  "--threads", "1", "--latency-runs", "5", "--quiet", "--output-dir", str(out)])
    assert cli_compare.run(args) == 0
    assert {p.name for p in out.iterdir()} == {"compare.json", "compare.md", "compare.png"}
    report = json.loads((out / "compare.json").read_text())
    assert set(report) == {"config", "criteria", "environment", "unpruned", "runs", "summary", "latency", "seconds"}
    assert report["config"]["data"] == "digits" and report["config"]["criteria"] == ["pfgdf+chip", "l1"]
    assert report["config"]["quick"] is True and report["config"]["threads"] == 1
    assert set(report["criteria"]) == {"pfgdf+chip", "l1"}
    base = report["unpruned"]
    assert 0.0 <= base["accuracy"] <= 1.0 and 0.0 <= base["acc_finetuned"]["mean"] <= 1.0
    assert base["macs"] > 0 and base["params"] > 0 and base["latency_ms"] > 0
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        assert set(run) == CELL_KEYS, run
        assert abs(run["macs_kept"] - 0.5) <= 0.02
        assert run["params_after"] < base["params"]
        for key in ("acc_stale", "acc_recal", "acc_finetuned"):
            assert 0.0 <= run[key] <= 1.0
        assert run["latency_ms"] > 0 and run["speedup"] > 0
    assert report["latency"]["threads"] == 1 and report["latency"]["runs"] == 5
    assert len(report["summary"]) == 2
    for row in report["summary"]:
        assert row["seeds"] == 1 and row["failed"] == 0
        assert row["acc_finetuned"]["min"] <= row["acc_finetuned"]["mean"] <= row["acc_finetuned"]["max"]
        assert row["latency_ms"]["mean"] > 0
    printed = capsys.readouterr().out
    assert "unpruned (anchor)" in printed and "pfgdf+chip" in printed and "latency ms (1 thread)" in printed
    assert (out / "compare.md").read_text().startswith("# Criteria comparison\n\n| criterion |")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--criteria", "l3"], "invalid choice: 'l3'"),
    (["--targets", "1.5"], r"--targets must be a number in \(0, 1\), got 1.5"),
    (["--targets", "1"], r"--targets must be a number in \(0, 1\), got 1"),
    (["--seeds", "-1"], "--seeds must be an integer >= 0, got -1"),
    (["--data", "cifar"], "invalid choice: 'cifar'"),
    (["--finetune-epochs", "0"], "--finetune-epochs must be an integer >= 1"),
])
def test_bad_values_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        _args([*argv, "--output-dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--criteria", "l1", "l1"], "criteria: l1 given more than once"),
    (["--targets", "0.5", "0.5"], "targets: 0.5 given more than once"),
    (["--limit", "5"], "limit must be an integer >= 20"),
])
def test_bad_combinations_raise_before_anything_runs(tmp_path, argv, message):
    args = _args([*argv, "--output-dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=message):
        cli_compare.run(args)
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="--output-dir .* is a file"):
        cli_compare.run(_args(["--quick", "--output-dir", str(target)]))
    assert target.read_text() == "keep me"


def test_quick_defaults_yield_to_explicit_options():
    config = cli_compare.config_from_args(_args(["--quick", "--data", "mnist", "--width", "4", "--no-latency"]))
    assert (config.data, config.width, config.train_epochs, config.limit, config.latency) == ("mnist", 4, 5, None,
                                                                                              False)
    assert (config.targets, config.seeds, config.criteria) == ((0.5,), (0, 1), CRITERIA)
    assert cli_compare.config_from_args(_args(["--quick", "--seeds", "3"])).seeds == (3,)
    assert cli_compare.config_from_args(_args([])) == CompareConfig()


def test_quick_is_a_small_grid_of_every_criterion():
    """--quick ran the full grid (13 x 3 x 3 cells, 13.75 minutes): now every criterion once per seed, at one target."""
    quick, full = CompareConfig.smoke(), CompareConfig()
    cells = len(quick.criteria) * len(quick.targets) * len(quick.seeds)
    assert quick.criteria == full.criteria and cells == 2 * len(CRITERIA) == 26
    assert len(full.criteria) * len(full.targets) * len(full.seeds) == 117
    assert str(quick.targets[0]) in quick_summary() and "every criterion" in quick_summary()


@pytest.mark.parametrize("value", [0.003, 0.007, 0.1, 1 / 3])
def test_mean_of_equal_seeds_stays_within_min_and_max(value):
    """statistics.fmean([0.003] * 3) is 0.0030000000000000005: the negative error bar that crashed the plot."""
    for n in (1, 2, 3, 5):
        row = stats([value] * n)
        assert row["min"] <= row["mean"] <= row["max"] and row["mean"] == value and row["std"] == 0.0


def _report(mean_outside: bool) -> dict:
    """A small comparison report; with ``mean_outside``, means one ulp above max as older versions wrote them."""
    acc = 0.003
    cell = {"mean": 0.0030000000000000005 if mean_outside else acc, "min": acc, "max": acc, "std": 0.0}
    row = {"criterion": "l1", "target": 0.5, "seeds": 3, "failed": 0, "macs_kept": {"mean": 0.5},
           "params_kept": {"mean": 0.4}, "acc_stale": cell, "acc_recal": cell, "acc_finetuned": cell}
    config = {"criteria": ["l1"], "data": "digits", "seeds": [0, 1, 2], "train_images": 8, "test_images": 2,
              "width": 8, "train_epochs": 1, "recalibration_batches": 1, "finetune_epochs": 1, "finetune_lr": 0.01}
    return {"config": config, "unpruned": {"accuracy": 0.9, "macs": 1e6, "params": 10}, "summary": [row],
            "runs": [], "seconds": 1.0}


def test_plot_survives_a_mean_rounded_outside_its_range(tmp_path):
    report = _report(mean_outside=True)
    assert report["summary"][0]["acc_recal"]["mean"] > report["summary"][0]["acc_recal"]["max"]
    assert plot(report, tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_and_json_are_written_before_the_plot(tmp_path, monkeypatch):
    """A plotting error loses nothing: compare.json and compare.md are on disk, the error is returned."""
    from pfgdf_plugin.studies.compare import report as compare_report

    def broken(*_args, **_kwargs):
        raise ValueError("'yerr' must not contain negative values")

    monkeypatch.setattr(compare_report, "plot", broken)
    paths, error = write_outputs(_report(mean_outside=False), tmp_path / "out")
    assert [p.name for p in paths] == list(OUTPUTS[:2])
    assert error == "ValueError: 'yerr' must not contain negative values"
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["summary"][0]["criterion"] == "l1"
    assert "| l1 | 0.50 |" in (tmp_path / "out" / "compare.md").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare.json", "compare.md"]


@pytest.mark.parametrize("kwargs, message", [
    ({"data": "cifar"}, "data must be one of 'digits', 'mnist'"),
    ({"targets": [0.5, 0.0]}, r"targets must be a number in \(0, 1\), got 0.0"),
    ({"targets": []}, "targets must be a non-empty list"),
    ({"criteria": ["pfgdf"]}, "criteria must be one of 'pfgdf-l1'"),
    ({"seeds": [0, 1.5]}, "seeds must be an integer >= 0"),
    ({"latency": "yes"}, "latency must be true or false"),
])
def test_config_errors_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**kwargs)


def test_a_failing_cell_is_reported_and_the_others_kept(tmp_path, monkeypatch, one_torch_thread):
    def boom():
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.CRITERIA, "l1", dataclasses.replace(registry.CRITERIA["l1"], build=boom))
    out = tmp_path / "out"
    args = _args(["--quick", "--criteria", "pfgdf-l1", "l1", "--targets", "0.5", "--seeds", "0", "--threads", "1",
                  "--no-latency", "--quiet", "--output-dir", str(out)])
    assert cli_compare.run(args) == 1
    report = json.loads((out / "compare.json").read_text())
    by_name = {r["criterion"]: r for r in report["runs"]}
    assert by_name["l1"]["error"] == "RuntimeError: boom" and "acc_finetuned" in by_name["pfgdf-l1"]
    assert {r["criterion"]: r["failed"] for r in report["summary"]} == {"pfgdf-l1": 0, "l1": 1}
    assert report["latency"] is None and "latency_ms" not in report["unpruned"]
    assert "1 cell(s) FAILED" in (out / "compare.md").read_text()
