"""Outputs never destroy inputs or each other: atomic files, no temp files left, one writer, staged export sets."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pfgdf_plugin._util import io, validate
from pfgdf_plugin.deploy.bundle import BundleConfig, export_bundle
from pfgdf_plugin.models.saved import save_pruned
from pfgdf_plugin.models.zoo import CifarVGG


def test_outputs_must_differ_from_inputs_and_from_each_other(tmp_path):
    with pytest.raises(ValueError, match="would overwrite an input"):
        validate.distinct([tmp_path / "a.pt"], [tmp_path / "a.pt"])
    with pytest.raises(ValueError, match="two outputs are the same file"):
        validate.distinct([tmp_path / "a.pt"], [tmp_path / "b.pt", tmp_path / "sub" / ".." / "b.pt"])


def test_stale_temp_files_of_dead_processes_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".m.pt.{pid}.abcd.tmp"
    stale.write_bytes(b"x" * 100)
    mine = tmp_path / f".m.pt.{os.getpid()}.efgh.tmp"  # a live writer's temp file stays
    mine.write_bytes(b"y")
    io.write_text(tmp_path / "m.pt", "new")
    assert not stale.exists() and mine.exists()
    assert (tmp_path / "m.pt").read_text() == "new"


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "big.bin"
    script = textwrap.dedent(f"""
        import time
        from pfgdf_plugin._util import io
        with io.terminate_cleanly():
            def slow(fh):
                fh.write(b"x" * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
            io.write_with({str(target)!r}, slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert list(tmp_path.glob(".big.bin.*.tmp"))  # the temp file exists while writing
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pfgdf_plugin._util import io
            with io.output_lock({str(target)!r}):
                print("locked", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(io.OutputBusyError, match=rf"being written by another process \(pid {holder.pid}\)"):
            with io.output_lock(target):
                pass
        assert time.perf_counter() - start < 5
    finally:
        holder.kill()
        holder.wait()
    with io.output_lock(target):  # released when its holder died
        pass


def _saved_vgg(tmp_path, name, seed):
    torch.manual_seed(seed)
    path = tmp_path / name
    save_pruned(CifarVGG((8, "M", 16, "M")), path, metadata={"input_size": [3, 32, 32]})
    return path


def test_export_commits_a_set_and_never_reads_an_earlier_runs_files(tmp_path):
    out = tmp_path / "export"
    first = export_bundle(_saved_vgg(tmp_path, "a.pt", 0), out, BundleConfig(calibration="digits", calib_batches=1,
                                                                             exporter="torchscript"))
    assert first.int8.top1_agreement is not None
    # A second model into the same directory: INT8 is checked against this run's float model, not the first's.
    second = export_bundle(_saved_vgg(tmp_path, "b.pt", 1), out, BundleConfig(calibration="digits",
                                                                              calib_batches=1,
                                                                              exporter="torchscript"))
    assert second.int8.source == out / "model.onnx" and second.int8.top1_agreement >= 0.8
    report = json.loads((out / "export.json").read_text())
    assert report["source"].endswith("b.pt") and report["onnx"]["path"] == str(out / "model.onnx")
    # No staging directory or lock file is left, and a run without INT8 removes the earlier INT8 file.
    export_bundle(_saved_vgg(tmp_path, "c.pt", 2), out, BundleConfig(exporter="torchscript"))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_export_leaves_the_previous_set_intact(tmp_path, monkeypatch):
    out = tmp_path / "export"
    export_bundle(_saved_vgg(tmp_path, "a.pt", 0), out, BundleConfig(exporter="torchscript"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import pfgdf_plugin.deploy.bundle as bundle

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(bundle, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_bundle(_saved_vgg(tmp_path, "b.pt", 1), out, BundleConfig(exporter="torchscript"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_dir_problems_are_refused_before_any_work(tmp_path):
    model = _saved_vgg(tmp_path, "a.pt", 0)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        export_bundle(model, a_file)
    with pytest.raises(ValueError, match="output_dir must be a non-empty string"):
        export_bundle(model, "")
    with pytest.raises(ValueError, match=r"cannot be created: .*file' is not a directory"):
        export_bundle(model, a_file / "sub")
    with pytest.raises(ValueError, match="would overwrite an input"):
        export_bundle(model, tmp_path, BundleConfig(calibration=str(tmp_path / "export.json")))
    assert Path(model).exists() and not (tmp_path / "export.json").exists()


def test_int8_settings_follow_the_cpu_and_are_recorded(tmp_path):
    from pfgdf_plugin.deploy.int8 import quantize_int8
    from pfgdf_plugin.deploy.onnx import export_onnx, read_model_metadata
    from pfgdf_plugin.measure.platform import int8_kernels

    # Both kinds of x86 CPU, decided from their flags: only the one without VNNI needs 7-bit weights.
    assert int8_kernels({"sse4_2", "avx2", "fma"}, "x86_64") == "x86-no-vnni"
    assert int8_kernels({"avx512f", "avx512bw"}, "x86_64") == "x86-no-vnni"  # AVX-512 alone is not enough
    assert int8_kernels({"avx2", "avx_vnni"}, "x86_64") == "vnni"
    assert int8_kernels({"avx512f", "avx512_vnni"}, "x86_64") == "vnni"
    assert int8_kernels({"neon"}, "aarch64") == "other"
    torch.manual_seed(0)
    src = export_onnx(CifarVGG((8, "M", 16, "M")), tmp_path / "m.onnx", (3, 32, 32), exporter="torchscript").path
    auto = quantize_int8(src, tmp_path / "auto.int8.onnx", "digits", num_batches=1)
    assert auto.kernels == int8_kernels() and auto.reduce_range == (auto.kernels == "x86-no-vnni")
    assert f"CPU int8 kernels: {auto.kernels}" in read_model_metadata(auto.path)["quantization"]
    # The settings a CPU without VNNI gets are accurate here too.
    seven = quantize_int8(src, tmp_path / "seven.int8.onnx", "digits", num_batches=1, reduce_range=True)
    assert seven.reduce_range and "7-bit range" in read_model_metadata(seven.path)["quantization"]
    assert seven.top1_agreement >= 0.8
    with pytest.raises(ValueError, match="reduce_range must be true or false"):
        quantize_int8(src, tmp_path / "x.int8.onnx", "digits", reduce_range="yes")


def test_a_recipe_never_overwrites_its_own_checkpoint(tmp_path):
    from pfgdf_plugin.recipes import Recipe

    out = tmp_path / "run"
    out.mkdir()
    checkpoint = out / "pruned.pt"  # a previous run's output, used as this run's input
    save_pruned(CifarVGG((8, "M", 16, "M")), checkpoint)
    before = checkpoint.read_bytes()
    recipe = Recipe.from_dict({"model": {"name": "cifar_vgg16", "checkpoint": str(checkpoint)},
                               "output_dir": str(out)})
    with pytest.raises(ValueError, match="would overwrite an input"):
        recipe.check_files()
    assert checkpoint.read_bytes() == before
    Recipe.from_dict({"model": {"name": "cifar_vgg16", "checkpoint": str(checkpoint)},
                      "output_dir": str(tmp_path / "elsewhere")}).check_files()  # another directory is fine


@pytest.mark.parametrize("extra, match", [
    (["--output", "{tmp}/x.pt", "--report", "{tmp}/x.pt"], "two outputs are the same file"),
    (["--output", "{tmp}"], "--output .* is a directory"),
    (["--output", ""], "--output must be a non-empty string"),
    (["--output", "{tmp}/afile/x.pt"], r"--output .* cannot be created: .*afile' is not a directory"),
])
def test_prune_refuses_bad_outputs_before_any_work(tmp_path, capsys, extra, match):
    from pfgdf_plugin.cli import main

    (tmp_path / "afile").write_text("x")
    argv = ["prune", "--model", "resnet18", "--alpha", "1"] + [a.format(tmp=tmp_path) for a in extra]
    start = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(match, err), err
    assert time.perf_counter() - start < 5  # refused before building the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
