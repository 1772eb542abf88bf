"""Fine-tuning under torchrun: 2 gloo processes reproduce the single-process run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "finetune_distributed.py"


def _run(args, out, tmp_path):
    run = subprocess.run([sys.executable, *args, str(SCRIPT), "--epochs", "1", "--output", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_gloo_processes_match_one(tmp_path):
    single = _run([], tmp_path / "single.json", tmp_path)
    ddp = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], tmp_path / "ddp.json",
               tmp_path)
    assert (single["processes"], ddp["processes"]) == (1, 2)
    (a,), (b,) = single["history"], ddp["history"]
    assert a["val_accuracy"] == b["val_accuracy"]
    assert a["train_accuracy"] == b["train_accuracy"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
