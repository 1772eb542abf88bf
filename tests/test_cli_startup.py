"""``pfgdf`` starts without importing torch, its static help values match their owners, every failure ends as one
``pfgdf COMMAND: error: ...`` line with status 2, and ``--threads`` reaches torch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from pfgdf_plugin import cli
from pfgdf_plugin._util import threads as threads_util
from pfgdf_plugin.cli import _names
from pfgdf_plugin.cli import export as cli_export
from pfgdf_plugin.cli import inspect as cli_inspect

HEAVY = ("torch", "timm", "onnx", "onnxruntime", "torch_pruning", "matplotlib", "torchvision")


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=120)


def test_building_the_parser_imports_nothing_heavy():
    run = _python("import sys; from pfgdf_plugin.cli import build_parser; build_parser(); "
                  f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["prune", "--help"], ["compare", "--help"],
                                  ["profile", "--help"]])
def test_help_and_version_import_no_heavy_module(argv):
    # -X importtime lists every module imported, one per line on stderr: "import time: self | cumulative | name".
    run = _python(f"import sys; sys.argv = ['pfgdf', *{argv!r}]; from pfgdf_plugin.cli import main; main()",
                  "-X", "importtime")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: pfgdf" in run.stdout or "pfgdf-plugin" in run.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in run.stderr.splitlines() if "|" in line}
    assert "argparse" in imported  # the listing is there, so its absences mean something
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def _owners() -> list[tuple[str, object, object]]:
    from pfgdf_plugin import data
    from pfgdf_plugin.criteria import STATISTICS
    from pfgdf_plugin.deploy import bundle, int8, onnx, ort, parity
    from pfgdf_plugin.measure import latency, profiling
    from pfgdf_plugin.studies import compare, coverage

    return [
        ("BUILTIN_DATA", _names.BUILTIN_DATA, data.BUILTIN),
        ("STATISTICS", _names.STATISTICS, STATISTICS),
        ("PROTOCOL_RUNS", _names.PROTOCOL_RUNS, latency.PROTOCOL_RUNS),
        ("PROFILE_LEVELS", _names.PROFILE_LEVELS, profiling.LEVELS),
        ("COMPARE_CRITERIA", _names.COMPARE_CRITERIA, compare.CRITERIA),
        ("COMPARE_DATASETS", _names.COMPARE_DATASETS, compare.DATASETS),
        ("COMPARE_QUICK", _names.COMPARE_QUICK, compare.QUICK_SETTINGS),
        ("COVERAGE_TARGET_MACS", _names.COVERAGE_TARGET_MACS, coverage.TARGET_MACS),
        ("COVERAGE_MACS_KEPT_LIMIT", _names.COVERAGE_MACS_KEPT_LIMIT, coverage.MACS_KEPT_LIMIT),
        ("COVERAGE_TIMEOUT", _names.COVERAGE_TIMEOUT, coverage.DEFAULT_TIMEOUT),
        ("COVERAGE_MEMORY_LIMIT_GB", _names.COVERAGE_MEMORY_LIMIT_GB, coverage.DEFAULT_MEMORY_LIMIT_GB),
        ("COVERAGE_FAST", _names.COVERAGE_FAST, tuple(c.name for c in coverage.FAST_SUBSET)),
        ("EXPORT_FORMATS", _names.EXPORT_FORMATS, bundle.FORMATS),
        ("ACTIVATION_TYPES", _names.ACTIVATION_TYPES, int8.ACTIVATION_TYPES),
        ("DEFAULT_OPSET", _names.DEFAULT_OPSET, onnx.DEFAULT_OPSET),
        ("EXPORTERS", _names.EXPORTERS, onnx.EXPORTERS),
        ("TARGET_PLATFORMS", _names.TARGET_PLATFORMS, ort.TARGET_PLATFORMS),
        ("PARITY_TOLERANCE", _names.PARITY_TOLERANCE, parity.PARITY_TOLERANCE),
    ]


def test_static_help_values_match_their_owners():
    stale = [f"{name}: cli/_names.py has {copy!r}, the owner {real!r}" for name, copy, real in _owners()
             if copy != real or type(copy) is not type(real)]
    assert not stale, "update pfgdf_plugin/cli/_names.py:\n" + "\n".join(stale)


def test_every_public_name_of_the_static_module_is_checked():
    public = {n for n in vars(_names) if n.isupper()}
    assert public == {name for name, _, _ in _owners()}


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("error, code, expected", [
    (RuntimeError("boom"), 2, "pfgdf inspect: error: RuntimeError: boom (unexpected: set PFGDF_TRACEBACK=1"),
    (KeyError("weights"), 2, "pfgdf inspect: error: KeyError: 'weights' (unexpected"),
    (MemoryError(), 2, "pfgdf inspect: error: out of memory (MemoryError)"),
    (PermissionError(13, "Permission denied", "x.pt"), 2, "pfgdf inspect: error: [Errno 13] Permission denied: 'x.pt'"),
    (ValueError("--input-size is bad"), 2, "pfgdf inspect: error: --input-size is bad"),
    (KeyboardInterrupt(), 130, "pfgdf inspect: interrupted"),
])
def test_every_failure_is_one_error_line(monkeypatch, capsys, error, code, expected):
    def fail(_args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(cli_inspect, "run", fail)
    monkeypatch.delenv("PFGDF_TRACEBACK", raising=False)
    assert cli.main(["inspect", "model.pt"]) == code
    err = capsys.readouterr().err
    assert err.startswith(expected) and "Traceback" not in err and err.count("\n") == 1


def test_package_errors_speak_for_themselves(monkeypatch, capsys):
    from pfgdf_plugin.deploy.parity import ParityError

    message = "model.onnx differs from PyTorch by 3e-2 > 1e-4; not written"

    def fail(_args: argparse.Namespace) -> int:
        raise ParityError(message)

    monkeypatch.setattr(cli_export, "run", fail)
    assert cli.main(["export", "m.pt", "--output-dir", "out"]) == 2
    assert capsys.readouterr().err == f"pfgdf export: error: {message}\n"


def test_traceback_on_request(monkeypatch, capsys):
    def fail(_args: argparse.Namespace) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_inspect, "run", fail)
    monkeypatch.setenv("PFGDF_TRACEBACK", "1")
    assert cli.main(["inspect", "model.pt"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("see where it came from)")


def test_a_file_that_is_no_model_is_an_error_line_not_a_traceback(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 64)
    run = subprocess.run([sys.executable, "-m", "pfgdf_plugin.cli", "inspect", str(junk)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.startswith("pfgdf inspect: error: ") and "Traceback" not in run.stderr


# ---------------------------------------------------------------- threads


def test_set_threads_applies_to_torch_and_is_what_onnx_runtime_gets():
    before = torch.get_num_threads()
    try:
        assert threads_util.set_threads(1) == before
        assert torch.get_num_threads() == 1 and threads_util.current_threads() == 1
        with pytest.raises(ValueError, match=r"--threads must be an integer in \[1, \d+\], got 0"):
            threads_util.set_threads(0)
        with pytest.raises(ValueError, match=r"--threads must be an integer in \[1, \d+\], got 100000"):
            threads_util.set_threads(100_000)
        assert torch.get_num_threads() == 1 and threads_util.current_threads() == 1  # untouched by the refusals
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "100000", "two"])
def test_bad_thread_counts_are_usage_errors(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prune", "--model", "resnet18", "--alpha", "1", "--output", "x.pt", "--threads", value])
    assert exit_.value.code == 2
    assert "--threads must be an integer in [1, " in capsys.readouterr().err


def _argv(command: str, tmp_path) -> list[str]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input_size: [1, 8, 8]\n")
    return {"demo": ["demo"], "run": ["run", "--config", str(recipe)],
            "prune": ["prune", "--model", "resnet18", "--alpha", "1", "--output", str(tmp_path / "x.pt")],
            "compare": ["compare", "--quick", "--output-dir", str(tmp_path / "c")]}[command]


@pytest.mark.parametrize("command", ["demo", "run", "prune", "compare"])
def test_threads_default_to_one_and_reach_set_threads(monkeypatch, capsys, tmp_path, command):
    calls = []

    def record(count: int, name: str = "--threads") -> int:
        calls.append(count)
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(threads_util, "set_threads", record)
    assert cli.main(_argv(command, tmp_path)) == 130
    assert cli.main([*_argv(command, tmp_path), "--threads", "1"]) == 130
    assert calls == [threads_util.DEFAULT_THREADS, 1]
    assert "--threads N" in cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()
