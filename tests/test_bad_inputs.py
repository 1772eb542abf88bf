"""Inputs that once slipped through prune(): each gets a clear error (model untouched) or a documented behaviour."""

import warnings

import pytest
import timm
import torch
import torch.nn as nn

from pfgdf_plugin import prune
from tests.conftest import state_hash


def _resnet():
    return timm.create_model("resnet18", num_classes=10)


def test_a_layer_of_identical_filters_no_longer_blocks_a_target():
    model = _resnet()
    with torch.no_grad():
        model.layer1[0].conv1.weight[:] = model.layer1[0].conv1.weight[0:1].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no miss warning: the target is met
        result = prune(model, torch.randn(1, 3, 32, 32), target_macs=0.9)
    assert abs(result.macs_kept - 0.9) <= 0.01
    kept = result.model.layer1[0].conv1.out_channels
    assert 1 < kept < 64  # scored as an ideal Gaussian layer: neither whole nor collapsed to min_channels


@pytest.mark.parametrize("make, kwargs, match", [
    (lambda: _resnet(), {"example_inputs": torch.randn(0, 3, 32, 32)},
     r"example_inputs must hold at least one sample; got a tensor of shape \(0, 3, 32, 32\)"),
    (lambda: _resnet(), {"example_inputs": "an image"}, "example_inputs must be a tensor"),
    (lambda: _zeroed(_resnet()), {}, "every conv and linear weight is zero"),
    (lambda: _resnet(), {"round_to": 10**9}, r"round_to=1000000000 is at least the largest prunable group \(512"),
    (lambda: _resnet(), {"min_channels": 10**6, "alpha": 1.0, "target_macs": None},
     r"min_channels=1000000 is at least the largest prunable group"),
    (lambda: _resnet(), {"importance": lambda g: torch.full((len(g[0].idxs),), float("nan"))},
     r"importance .* on the group of '[\w.]+' \(\d+ channels\) returned NaN"),
    (lambda: _resnet(), {"importance": lambda g: torch.ones(3)},
     r"importance .* on the group of '[\w.]+' \(\d+ channels\) returned 3 scores of shape \(3,\); expected \d+"),
    (lambda: _resnet(), {"rank_by": lambda g: [0.0] * len(g[0].idxs)},
     r"importance .* returned a list; expected a tensor"),
])
def test_bad_inputs_raise_clearly_and_leave_the_model_untouched(make, kwargs, match):
    model = make()
    before = state_hash(model)
    args = {"example_inputs": torch.randn(1, 3, 32, 32), "target_macs": 0.5} | kwargs
    with pytest.raises(ValueError, match=match):
        prune(model, **args)
    assert state_hash(model) == before


def _zeroed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_a_fully_convolutional_net_prunes_from_a_batch_of_one():
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, 1))
    result = prune(net, torch.randn(1, 3, 16, 16), target_macs=0.5)
    assert result.model(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)
    assert abs(result.macs_kept - 0.5) <= 0.01


def test_a_missed_target_names_the_nearest_plans():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1))
    with pytest.warns(UserWarning, match=r"the nearest plans measured keep \d+\.\d% and \d+\.\d%"):
        result = prune(net, torch.randn(1, 3, 16, 16), target_macs=0.5)
    assert result.extra["target_met"] is False


def test_a_missed_target_names_only_measured_plans(monkeypatch):
    from pfgdf_plugin.pruning.search import PlanSearch

    # Every plan measures 70% (as when overlapping groups undo the predicted cut): none is below the target,
    # so the warning must not quote the predicted floor as a measured plan.
    monkeypatch.setattr(PlanSearch, "kept", lambda self, applied, kind: 0.7)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 2, 1))
    with pytest.warns(UserWarning, match=r"no plan measured keeps less than 70\.0% \(") as caught:
        prune(net, torch.randn(1, 3, 16, 16), target_macs=0.5)
    assert not any("nearest plans" in str(w.message) for w in caught)


def test_bench_threads_are_bounded_and_an_oversubscribed_count_is_said(tmp_path, capsys):
    from pfgdf_plugin._util.threads import available_cpus
    from pfgdf_plugin.cli import main
    from pfgdf_plugin.cli.bench import MAX_THREADS

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # never reached: the thread counts are checked first
    assert main(["bench", str(model), "--threads", "100000"]) == 2
    assert f"--threads must be an integer in [1, {MAX_THREADS}], got 100000" in capsys.readouterr().err
    assert main(["bench", str(model), "--threads", str(available_cpus() + 1)]) == 2  # the empty file fails later
    assert f"exceeds the {available_cpus()} CPUs available here" in capsys.readouterr().err
