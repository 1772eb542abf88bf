"""Saved pruned models: identical outputs after a round trip, no code run on load, atomic writes, clear errors."""

import json
import os
from pathlib import Path

import pytest
import timm
import torch

from pfgdf_plugin import load_pruned, prune, save_pruned
from pfgdf_plugin.cli import main
from pfgdf_plugin.models.meta import ModelMeta
from pfgdf_plugin.models.saved import FORMAT, load_pruned_with_metadata
from pfgdf_plugin.models.zoo import CifarResNet


def _outputs_match(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name, size", [("mobilenetv3_small_050", 64), ("vit_tiny_patch16_224", 224)])
def test_round_trip_of_a_pruned_timm_model_gives_identical_outputs(tmp_path, name, size):
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(2, 3, size, size)
    pruned = prune(model, x[:1], target_macs=0.6).model.eval()
    path = save_pruned(pruned, tmp_path / "m.pt", metadata={"input_size": [3, size, size], "note": "x"})
    # A fresh timm model cannot take the pruned state dict: the file records the channel changes as well.
    with pytest.raises(RuntimeError, match="size mismatch"):
        timm.create_model(name, num_classes=10).load_state_dict(pruned.state_dict())
    loaded, meta = load_pruned_with_metadata(path)
    assert _outputs_match(loaded, pruned, x)
    assert meta.input_size == (3, size, size) and meta.extra == {"note": "x"}


def test_zoo_networks_and_user_architectures_round_trip(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    pruned = prune(CifarResNet(depth=20), x[:1], target_macs=0.5).model
    assert _outputs_match(load_pruned(save_pruned(pruned, tmp_path / "zoo.pt")), pruned, x)

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    small = prune(net, x[:1], alpha=1.0).model
    path = save_pruned(small, tmp_path / "user.pt")
    with pytest.raises(ValueError, match=r"user-defined architecture .*model=YourNet"):
        load_pruned(path)
    rebuilt = load_pruned(path, model=lambda: torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 2)))
    assert _outputs_match(rebuilt, small, x)
    with pytest.raises(ValueError, match="(do|does) not fit this architecture"):
        load_pruned(path, model=torch.nn.Sequential(torch.nn.Linear(3, 2)))


class _Payload:
    """Unpickling this writes a marker file: what a malicious model file would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "owned"))


def _malicious(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "metadata": {}, "model": _Payload(marker)}, path)
    return path, marker


def test_a_malicious_file_is_refused_and_its_payload_never_runs(tmp_path):
    path, marker = _malicious(tmp_path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_pruned(path)
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["inspect", "{path}"],
    ["export", "{path}", "--output-dir", "{out}"],
    ["bench", "{onnx}", "--torch", "{path}", "--runs", "1", "--warmup", "0"],
    ["prune", "--checkpoint", "{path}", "--alpha", "1", "--output", "{out}/p.pt"],
])
def test_no_cli_command_runs_a_malicious_file(tmp_path, capsys, argv):
    path, marker = _malicious(tmp_path)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    args = [a.format(path=path, out=tmp_path / "out", onnx=onnx) for a in argv]
    assert main(args) == 2
    assert not marker.exists()
    assert "--trust-pickle" in capsys.readouterr().err


def test_old_pickled_files_load_only_when_trusted(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": FORMAT, "version": 1, "metadata": {"timm_model": "x"}, "model": torch.nn.Linear(3, 2)},
               path)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_pruned(path)
    with pytest.warns(UserWarning, match="unpickling"):
        model, meta = load_pruned_with_metadata(path, trust_pickle=True)
    assert isinstance(model, torch.nn.Linear) and meta.timm_model == "x"


def _crafted(tmp_path, **changes):
    good = tmp_path / "good.pt"
    save_pruned(torch.nn.Sequential(torch.nn.Linear(3, 2)), good)
    payload = torch.load(good, weights_only=True)
    header = json.loads(payload["header"])
    for key, value in changes.items():
        if key in ("version", "header", "tensors"):
            payload[key] = value
        else:
            header[key] = value
            payload["header"] = json.dumps(header)
    path = tmp_path / "crafted.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("changes, match", [
    ({"version": "2"}, "format version must be an integer"),
    ({"version": 99}, "newer pfgdf-plugin"),
    ({"header": "{not json"}, "header is not JSON"),
    ({"header": "[1, 2]"}, "header must be a JSON object"),
    ({"tensors": ["a"]}, "'tensors' must map names to tensors"),
    ({"metadata": "not a dict"}, "model metadata: expected a mapping"),
    ({"metadata": {"num_classes": "10"}}, "model metadata: num_classes must be an integer"),
    ({"architecture": {"kind": "pickle", "name": "x", "kwargs": {}}}, "'architecture' must be"),
    ({"modules": {"0": 5}}, "'modules' must map module names"),
])
def test_crafted_headers_get_clear_errors(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        load_pruned(_crafted(tmp_path, **changes), model=torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_pruned(torch.nn.Linear(3, 2), path)
    before = path.read_bytes()

    def half_write(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(torch.nn.Linear(3, 2), path)
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
    with pytest.raises(ValueError, match="model metadata: input_size must be"):
        save_pruned(torch.nn.Linear(3, 2), tmp_path / "x.pt", metadata={"input_size": [0]})


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_pruned(torch.nn.Linear(2, 2), tmp_path / "m.pt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_metadata_schema_round_trips_and_rebuilds_the_original():
    meta = ModelMeta(timm_model="resnet10t", num_classes=3, input_size=(3, 32, 32), target={"kind": "macs",
                                                                                           "keep": 0.5})
    again = ModelMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    assert again.original_model().fc.out_features == 3
