"""``pfgdf run --config recipe.yaml``: recipe validation, overrides, and the whole job on tiny real data."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pfgdf_plugin.cli import main
from pfgdf_plugin.cli import run as run_cli
from pfgdf_plugin.models.zoo import CifarResNet
from pfgdf_plugin.recipes import Recipe, apply_overrides, run_job, safe_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
# Overrides that make any recipe a smoke run of seconds.
TINY = ["train.epochs=1", "recover.finetune_epochs=1", "recover.recalibrate_batches=2", "benchmark.runs=5",
        "benchmark.threads=1", "data.limit=300"]


def pfgdf_run(*argv: str) -> int:
    """``pfgdf run ...`` through the subcommand's own parser (the top-level parser registers it separately)."""
    parser = argparse.ArgumentParser(prog="pfgdf")
    run_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *argv])
    return args.run(args)


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("data, message", [
    ({"epochs": 3}, r"recipe: unknown key epochs; known: benchmark, data, export, input_size, model, name"),
    ({"prune": {"target_mac": 0.5}}, r"recipe: unknown key prune\.target_mac \(did you mean prune\.target_macs\?\)"),
    ({"model": {"name": "resnet18", "depth": 20}}, r"recipe: unknown key model\.depth"),
])
def test_unknown_keys_are_named_with_their_path(data, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(data)


@pytest.mark.parametrize("data, message", [
    ({"prune": {"target_macs": 1.5}},
     r"^recipe: prune\.target_macs must be a number in \(0, 1\] \(the fraction to keep\), got 1\.5$"),
    ({"prune": {"target_macs": 0.5, "alpha": 1.0}}, r"exactly one of target_macs, target_params and alpha"),
    ({"prune": {"method": "l1"}}, r"recipe: prune\.method must be one of 'pfgdf', 'chip'; got 'l1'"),
    ({"prune": {"round_to": "fast"}}, r"recipe: prune\.round_to must be an integer >= 1, 'auto' or null"),
    ({"prune": {"statistic": "l3"}}, r"recipe: prune\.statistic must be one of"),
    ({"train": {"epochs": -1}}, r"recipe: train\.epochs must be an integer >= 0, got -1"),
    ({"train": {"epochs": 0}}, r"recipe: train\.epochs is 0 but there is no model\.checkpoint"),
    ({"train": {"lr": "fast"}}, r"recipe: train\.lr must be a finite number, got 'fast'"),
    ({"train": {"opt": "sgdd"}}, r"recipe: train\.opt must be a timm optimizer name"),
    ({"model": {"name": "resnet1"}}, r"recipe: model\.name 'resnet1' is neither a timm model .*resnet18"),
    ({"model": {"kwargs": {"num_classes": 3}}}, r"recipe: model\.kwargs may not set num_classes"),
    ({"model": {"in_chans": 3}, "input_size": [1, 8, 8]}, r"model\.in_chans is 3 but input_size has 1 channels"),
    ({"input_size": "0x5"}, r"recipe: input_size must be SIZE, HxW or CxHxW \(or \[H, W\], \[C, H, W\]\)"),
    ({"recover": {"distill": "yes"}}, r"recipe: recover\.distill must be true or false, got 'yes'"),
    ({"recover": {"distill_weight": 0}}, r"recipe: recover\.distill_weight must be a number in \(0, 1\]"),
    ({"export": {"onnx": False}}, r"recipe: benchmark\.runs > 0 needs export\.onnx: true"),
    ({"export": {"int8": True, "onnx": False}}, r"recipe: export\.int8 needs export\.onnx: true"),
    ({"benchmark": {"threads": []}}, r"recipe: benchmark\.threads must be a thread count or a non-empty list"),
    ({"data": "digits"}, r"recipe: data must be a mapping of keys"),
    ({"data": {"train_fraction": 1.0}}, r"recipe: data\.train_fraction must be a number in \(0, 1\), got 1\.0"),
])
def test_bad_values_name_the_key_path(data, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_dict(data)


def test_defaults_are_the_demo_job_and_numbers_parse_like_yaml():
    recipe = Recipe.from_dict({"train": {"lr": "1e-3"}, "input_size": 32})
    assert recipe.train.lr == 0.001  # PyYAML reads 1e-3 as a string
    assert recipe.input_size == (3, 32, 32) and recipe.prune.target_macs == 0.5 and recipe.train.epochs == 6
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with_ckpt = Recipe.from_dict({"model": {"checkpoint": "model.pt"}})
    assert with_ckpt.train.epochs == 0, "a checkpoint is pruned as it is unless train.epochs says otherwise"


def test_overrides_are_yaml_values_at_a_key_path():
    data = apply_overrides({"prune": {"target_macs": 0.5}},
                           ["prune.target_macs=null", "prune.target_params=0.4", "model.kwargs.img_size=32"])
    assert data == {"prune": {"target_macs": None, "target_params": 0.4}, "model": {"kwargs": {"img_size": 32}}}
    with pytest.raises(ValueError, match=r"override 'nodot' must look like key\.path=value"):
        apply_overrides({}, ["nodot"])
    with pytest.raises(ValueError, match=r"prune\.target_macs is a value, not a section"):
        apply_overrides({"prune": {"target_macs": 0.5}}, ["prune.target_macs.x=1"])


def test_cli_errors_stop_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    bad = write_recipe(tmp_path / "bad.yaml", {"prune": {"target_macs": 1.5}})
    with pytest.raises(ValueError, match=r"recipe: prune\.target_macs must be a number in \(0, 1\] .*, got 1\.5"):
        pfgdf_run("--config", str(bad), "--output-dir", str(out))
    good = write_recipe(tmp_path / "good.yaml", {"input_size": [1, 8, 8], "output_dir": str(out)})
    with pytest.raises(ValueError, match=r"recipe: unknown key train\.epoch \(did you mean train\.epochs\?\)"):
        pfgdf_run("--config", str(good), "--set", "train.epoch=1")
    missing = write_recipe(tmp_path / "missing.yaml", {"data": {"source": str(tmp_path / "nowhere")},
                                                       "output_dir": str(out)})
    with pytest.raises(FileNotFoundError, match=r"recipe: data\.source .*nowhere.* is neither a built-in dataset"):
        pfgdf_run("--config", str(missing))
    (tmp_path / "broken.yaml").write_text("prune: [target_macs: 0.5\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        pfgdf_run("--config", str(tmp_path / "broken.yaml"))
    with pytest.raises(FileNotFoundError, match="no recipe file"):
        pfgdf_run("--config", str(tmp_path / "none.yaml"))
    assert not out.exists()


def test_dry_run_prints_the_resolved_recipe(tmp_path, capsys):
    out = tmp_path / "out"
    assert pfgdf_run("--config", str(RECIPES / "mobilenetv3_digits.yaml"), "--output-dir", str(out), "--dry-run",
                     "--set", "prune.target_macs=null", "--set", "prune.target_params=0.4") == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["prune"]["target_params"] == 0.4 and shown["prune"]["target_macs"] is None
    assert shown["output_dir"] == str(out) and shown["model"]["name"] == "mobilenetv3_small_050"
    assert Recipe.from_dict(shown).prune.target_params == 0.4
    assert not out.exists()


def test_dry_run_builds_the_model_so_unknown_kwargs_fail_there(tmp_path, capsys):
    bad = write_recipe(tmp_path / "bad.yaml", {"model": {"name": "resnet10t", "kwargs": {"dropout": 0.1}},
                                               "input_size": [1, 8, 8], "output_dir": str(tmp_path / "out")})
    with pytest.raises(ValueError, match=r"^recipe: model\.kwargs \{'dropout': 0\.1\} do not fit 'resnet10t': .*drop"):
        pfgdf_run("--config", str(bad), "--dry-run")
    assert main(["run", "--config", str(bad), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("pfgdf run: error: recipe: model.kwargs {'dropout': 0.1} do not fit")
    # Kwargs the constructor takes pass, without building anything real (the vit recipe sets img_size).
    assert pfgdf_run("--config", str(RECIPES / "vit_tiny_heads.yaml"), "--dry-run", "--quiet",
                     "--output-dir", str(tmp_path / "vit")) == 0
    assert not (tmp_path / "out").exists() and not (tmp_path / "vit").exists()


BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("text, message", [
    (BOMB, r"expands to over 10,000 values \(each alias repeats what it names\); refused"),
    ("prune: &p {alpha: *p}\n", r"has a recursive alias"),
    ("[" * 50_000, r"is nested too deeply"),
])
def test_yaml_that_expands_without_bound_is_refused(tmp_path, text, message):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^recipe: '{re.escape(str(path))}': the YAML " + message):
        Recipe.from_yaml(path)
    with pytest.raises(ValueError, match="^recipe: override 'name=.*: the value: the YAML " + message):
        Recipe.from_dict({}, [f"name={text}"])


def test_a_huge_recipe_file_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(130 * 2**20)  # 130 MiB, sparse: nothing is written, and nothing must be read
    with pytest.raises(ValueError, match=r"huge\.yaml' is larger than 1 MiB; a recipe is a few hundred bytes"):
        Recipe.from_yaml(path)
    monkeypatch.setattr(safe_yaml, "MAX_BYTES", 100)  # the boundary, on a small scale
    path.write_text("name: " + "x" * 94)
    assert Recipe.from_yaml(path).name == "x" * 94
    path.write_text("name: " + "x" * 95)
    with pytest.raises(ValueError, match="is larger than"):
        Recipe.from_yaml(path)


def test_image_folders_need_two_classes_and_matching_validation_folders(tmp_path):
    one = digits_image_folder(tmp_path / "one", per_class=3)
    for extra in sorted(one.iterdir())[1:]:
        shutil.rmtree(extra)
    recipe = Recipe.from_dict({"data": {"source": str(one)}, "input_size": [1, 8, 8]})
    with pytest.raises(ValueError, match=r"data\.source .*one' holds 1 class folder\(s\) \['digit0'\]; a classifier "
                       "needs two classes or more"):
        recipe.check_files()
    train = digits_image_folder(tmp_path / "train", per_class=2)
    val = digits_image_folder(tmp_path / "val", per_class=1)
    shutil.rmtree(val / "digit3")
    recipe = Recipe.from_dict({"data": {"source": str(train), "val_source": str(val)}, "input_size": [1, 8, 8]})
    with pytest.raises(ValueError, match=r"data\.val_source .* has class folders .* but data\.source has "):
        recipe.check_files()


def test_one_label_in_a_tensor_file_is_refused_before_training(tmp_path):
    data = tmp_path / "one.pt"
    torch.save({"images": torch.rand(20, 1, 8, 8), "labels": torch.zeros(20, dtype=torch.long)}, data)
    recipe = Recipe.from_dict({"data": {"source": str(data)}, "input_size": [1, 8, 8],
                               "output_dir": str(tmp_path / "out")})
    with pytest.raises(ValueError, match=r"the training images carry 1 label\(s\) \[0\]; a classifier needs two"):
        run_job(recipe, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_example_recipes_parse(name):
    recipe = Recipe.from_yaml(RECIPES / name)
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


# ---------------------------------------------------------------- the job


def test_tiny_run_on_digits_writes_the_report_folder(tmp_path, capsys):
    out = tmp_path / "out"
    config = write_recipe(tmp_path / "tiny.yaml", {
        "name": "tiny digits", "input_size": [1, 8, 8], "data": {"source": "digits", "limit": 400},
        "train": {"epochs": 1}, "recover": {"finetune_epochs": 1, "recalibrate_batches": 3},
        "benchmark": {"runs": 5}, "output_dir": str(tmp_path / "ignored"),
    })
    assert pfgdf_run("--config", str(config), "--output-dir", str(out), "--quiet") == 0
    report = json.loads((out / "report.json").read_text())
    assert all(0.0 <= v <= 1.0 for v in report["accuracy"].values())
    assert report["params"]["after"] < report["params"]["before"]
    assert abs(report["macs"]["after"] / report["macs"]["before"] - 0.5) <= 0.01
    assert report["latency_ms_1_thread"]["pruned"]["median"] > 0 and report["speedup_1_thread"] > 0
    assert report["recipe"]["output_dir"] == str(out) and report["train_images"] == 320
    assert all(v <= 1e-4 for v in report["onnx_parity_relative_error"].values())
    assert (out / "report.md").read_text().startswith("# tiny digits\n")
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "latency.png", "original.pt",
                                               "pruned.pt", "original.onnx", "pruned.onnx"}
    printed = capsys.readouterr().out
    assert "group (root layer)" in printed and "val accuracy (digits)" in printed and "latency, 1 thread" in printed

    # The trained model as a checkpoint, pruned by CHIP: no training, no recovery, no export.
    again = tmp_path / "again"
    assert pfgdf_run("--config", str(config), "--output-dir", str(again), "--quiet", "--set", "prune.method=chip",
                     "--set", f"model.checkpoint={out / 'original.pt'}", "--set", "train.epochs=0",
                     "--set", "recover={recalibrate_batches: 0, finetune_epochs: 0}",
                     "--set", "export.onnx=false", "--set", "benchmark.runs=0") == 0
    second = json.loads((again / "report.json").read_text())
    assert second["accuracy"]["unpruned"] == pytest.approx(report["accuracy"]["unpruned"])
    assert second["latency_ms"] is None and second["training_history"] == []
    assert second["method"] == "chip" and "CHIP" in second["prune_report"]["criterion"]
    assert not (again / "pruned.onnx").exists() and (again / "pruned.pt").exists()


def test_mobilenetv3_recipe_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert pfgdf_run("--config", str(RECIPES / "mobilenetv3_digits.yaml"), "--output-dir", str(out), "--quiet",
                     *[a for o in [*TINY, "input_size=1x16x16"] for a in ("--set", o)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "mobilenetv3_small_050"
    assert abs(report["macs"]["after"] / report["macs"]["before"] - 0.6) <= 0.01
    assert set(report["latency_ms"]["1"]) == {"original", "pruned", "pruned.int8"}
    assert report["exports"]["ort"]["parity"]["passed"] and report["exports"]["int8"]["size_ratio"] < 1
    assert {"pruned.ort", "pruned.int8.onnx", "latency.png"} <= {p.name for p in out.iterdir()}
    assert "pruned, INT8 (ms)" in capsys.readouterr().out


def digits_image_folder(root: Path, per_class: int) -> Path:
    """scikit-learn's digits as PNG files in ImageFolder layout, ``root/<class>/<n>.png``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    for image, label in zip(digits.images, digits.target, strict=True):
        if counts[label] < per_class:
            (root / f"digit{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / f"digit{label}" / f"{counts[label]}.png")
            counts[label] += 1
    return root


def test_cifar_resnet_recipe_on_an_image_folder_from_a_state_dict(tmp_path):
    train = digits_image_folder(tmp_path / "images" / "train", per_class=12)
    test = digits_image_folder(tmp_path / "images" / "test", per_class=4)
    checkpoint = tmp_path / "resnet20.pt"
    torch.save({"state_dict": CifarResNet(depth=20, num_classes=10).state_dict()}, checkpoint)
    out = tmp_path / "out"
    overrides = [*TINY, f"data.source={train}", f"data.val_source={test}", "data.batch_size=32",
                 f"model.checkpoint={checkpoint}", "train.epochs=0", "export.int8=false", "input_size=16"]
    assert pfgdf_run("--config", str(RECIPES / "cifar_resnet_imagefolder.yaml"), "--output-dir", str(out),
                     "--quiet", *[a for o in overrides for a in ("--set", o)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train_images"] == 120 and report["val_images"] == 40 and report["num_classes"] == 10
    assert report["recipe"]["recover"]["distill"] is True and len(report["finetune_history"]) == 1
    assert abs(report["macs"]["after"] / report["macs"]["before"] - 0.5) <= 0.01
    assert "val accuracy (images/test)" in (out / "report.md").read_text()


def test_vit_tiny_heads_recipe_end_to_end(tmp_path):
    overrides = [*TINY, "data.source=digits", "data.limit=150", f"output_dir={tmp_path}"]
    recipe = Recipe.from_yaml(RECIPES / "vit_tiny_heads.yaml", overrides)
    summary = run_job(recipe, progress=False)
    assert summary["params"]["after"] < summary["params"]["before"]
    assert summary["accuracy"]["pruned_after_recalibration"] is None  # no BatchNorm in a ViT
