"""`pfgdf prune --method chip`: calibrates on the given images, prunes to the target, reports; clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from pfgdf_plugin.cli import main
from pfgdf_plugin.models.saved import load_pruned


def test_chip_prune_from_a_tensor_file(tmp_path):
    data = tmp_path / "calib.pt"
    torch.save({"images": torch.rand(6, 3, 20, 20), "labels": torch.zeros(6, dtype=torch.long)}, data)
    out, report = tmp_path / "pruned.pt", tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pfgdf_plugin.cli", "prune", "--model", "resnet18", "--num-classes", "10",
           "--input-size", "32", "--method", "chip", "--calib-data", str(data), "--calib-batches", "2",
           "--calib-batch-size", "3", "--target-macs", "0.6", "--output", str(out), "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "calibrating CHIP" in proc.stderr and "MACs" in proc.stdout
    rep = json.loads(report.read_text())
    assert rep["criterion"].startswith("CHIPImportance(feature='input'")  # the paper's post-activation maps
    assert abs(rep["macs_kept"] - 0.6) <= 0.01
    model = load_pruned(str(out))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "chip"], "--method chip needs --calib-data"),
        (["--calib-data", "digits"], "--calib-data is only used by --method chip"),
    ],
)
def test_calibration_arguments_are_checked_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "x.pt"
    code = main(["prune", "--model", "resnet18", "--alpha", "1", "--output", str(out), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_calib_batches_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--model", "resnet18", "--alpha", "1", "--output", str(tmp_path / "x.pt"),
              "--method", "chip", "--calib-data", "digits", "--calib-batches", "0"])
    assert "--calib-batches must be an integer >= 1" in capsys.readouterr().err
