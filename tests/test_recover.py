"""Recovery on real data (scikit-learn digits): BatchNorm recalibration, fine-tuning, checkpoint and resume."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from pfgdf_plugin import prune
from pfgdf_plugin.data import load_dataset, split
from pfgdf_plugin.recovery import FinetuneConfig, evaluate, finetune, recalibrate_bn


def small_cnn() -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def digits():
    train, val = split(load_dataset("digits", (1, 8, 8)))
    return train, val


def loaders(digits, seed=0):
    train, val = digits
    g = torch.Generator().manual_seed(seed)
    return DataLoader(train, 64, shuffle=True, generator=g), DataLoader(val, 256)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = small_cnn()
    result = finetune(model, *loaders(digits), FinetuneConfig(epochs=8, lr=0.05), progress=False)
    assert result.best_accuracy > 0.95, "the baseline must be a real, trained model"
    return model, result.best_accuracy


def test_recalibration_restores_a_pruned_model(trained, digits):
    model, _ = trained
    pruned = prune(model, torch.randn(1, 1, 8, 8), target_macs=0.5).model
    train_loader, val_loader = loaders(digits)
    stale = evaluate(pruned, val_loader)
    assert recalibrate_bn(pruned, train_loader, num_batches=10) == 10
    fresh = evaluate(pruned, val_loader)
    assert fresh - stale >= 0.3, (stale, fresh)


def test_finetuning_recovers_within_one_point(trained, digits):
    model, baseline = trained
    pruned = prune(model, torch.randn(1, 1, 8, 8), target_macs=0.5).model
    train_loader, val_loader = loaders(digits)
    recalibrate_bn(pruned, train_loader, num_batches=10)
    result = finetune(pruned, train_loader, val_loader, FinetuneConfig(epochs=6, lr=0.02), progress=False)
    assert result.best_accuracy >= baseline - 0.01, (baseline, result.history)
    assert evaluate(pruned, val_loader) == result.best_accuracy  # the best weights are loaded at the end


def test_distillation_from_the_unpruned_teacher_runs(trained, digits):
    model, _ = trained
    pruned = prune(model, torch.randn(1, 1, 8, 8), target_macs=0.5).model
    result = finetune(pruned, *loaders(digits), FinetuneConfig(epochs=1, lr=0.02, distill_weight=0.5),
                      teacher=model, progress=False)
    assert len(result.history) == 1 and result.history[0]["loss"] > 0


def test_resume_reproduces_the_uninterrupted_run(digits, tmp_path):
    cfg = FinetuneConfig(epochs=3, lr=0.05, seed=3)
    torch.manual_seed(1)
    straight = small_cnn()
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    full = finetune(straight, *loaders(digits), cfg, progress=False)

    resumed = small_cnn()
    resumed.load_state_dict(start)
    _run_two_epochs_then_crash(resumed, digits, cfg, tmp_path)
    again = small_cnn()  # a "new process": fresh model and loaders, everything else from last.pt
    result = finetune(again, *loaders(digits), cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert [h["val_accuracy"] for h in result.history] == [h["val_accuracy"] for h in full.history]
    for a, b in zip(again.state_dict().values(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class _Crash(Exception):
    pass


def _run_two_epochs_then_crash(model, digits, cfg, ckpt_dir):
    """Fine-tune until the third epoch's first batch, then die like a killed process."""
    train_loader, val_loader = loaders(digits)
    seen = {"batches": 0}
    per_epoch = len(train_loader)

    class Dying:
        def __getattr__(self, name):  # the real loader's sampler and generator
            return getattr(train_loader, name)

        def __iter__(self):
            for batch in train_loader:
                seen["batches"] += 1
                if seen["batches"] > 2 * per_epoch:
                    raise _Crash
                yield batch

        def __len__(self):
            return per_epoch

    with pytest.raises(_Crash):
        finetune(model, Dying(), val_loader, cfg, checkpoint_dir=ckpt_dir, progress=False)
    assert torch.load(ckpt_dir / "last.pt", weights_only=False)["epoch"] == 1


def test_interrupted_checkpoint_write_keeps_the_previous_one(digits, tmp_path, monkeypatch):
    model = small_cnn()
    finetune(model, *loaders(digits), FinetuneConfig(epochs=1), checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()

    real_save = torch.save

    def half_save(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        finetune(model, *loaders(digits), FinetuneConfig(epochs=1), checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("kwargs, match", [
    ({"config": FinetuneConfig(epochs=0)}, "epochs must be an integer >= 1"),
    ({"config": FinetuneConfig(lr=0.0)}, "lr must be a finite number > 0"),
    ({"config": FinetuneConfig(distill_weight=0.5)}, "needs a teacher"),
    ({"resume": True}, "resume=True needs checkpoint_dir"),
])
def test_bad_settings(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        finetune(small_cnn(), *loaders(digits), progress=False, **kwargs)


def test_recalibrate_errors():
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        recalibrate_bn(nn.Linear(2, 2), [torch.randn(1, 2)])
    with pytest.raises(ValueError, match="yielded no batch"):
        recalibrate_bn(small_cnn(), [])
