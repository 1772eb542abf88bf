"""Save/load of pruned models: identical outputs after a round trip, atomic writes, clear errors."""

import os

import pytest
import timm
import torch

from pfgdf_plugin import load_pruned, prune, save_pruned


def test_round_trip_gives_identical_outputs(tmp_path):
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    pruned = prune(model, x, target_macs=0.6).model.eval()
    path = save_pruned(pruned, tmp_path / "m.pt", metadata={"note": "x"})
    # A fresh timm model cannot take the pruned state dict: that is why whole modules are saved.
    with pytest.raises(RuntimeError, match="size mismatch"):
        timm.create_model("mobilenetv3_small_050", num_classes=10).load_state_dict(pruned.state_dict())
    loaded = load_pruned(path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.pt"
    save_pruned(torch.nn.Linear(3, 2), path)
    before = path.read_bytes()
    broken = torch.nn.Linear(3, 2)
    broken.hook = lambda: None  # lambdas cannot be pickled: the write fails half-way
    with pytest.raises(Exception, match="(?i)pickle"):
        save_pruned(broken, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_load_errors_are_specific(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_pruned(tmp_path / "missing.pt")
    other = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a model file written by save_pruned"):
        load_pruned(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a model file written by save_pruned"):
        load_pruned(text)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        save_pruned({"a": 1}, tmp_path / "x.pt")


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_pruned(torch.nn.Linear(2, 2), tmp_path / "m.pt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
