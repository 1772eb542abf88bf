"""benchmark_latency and `pfgdf bench`: result schema, written files, clear errors. No timing thresholds."""

import json
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
import torch_pruning as tp

from pfgdf_plugin import prune
from pfgdf_plugin.cli import main
from pfgdf_plugin.deploy.onnx import export_onnx
from pfgdf_plugin.measure.latency import benchmark_latency
from pfgdf_plugin.measure.result import SCHEMA
from pfgdf_plugin.models.zoo import CifarVGG

CFG = (16, "M", 32, "M", 64)
SIZE = (3, 32, 32)
MEASUREMENT_KEYS = {
    "variant", "runtime", "threads", "runs", "median_ms", "p90_ms", "min_ms", "mean_ms", "noise_p90_over_median",
    "macs", "speedup", "macs_reduction", "efficiency", "samples_ms",
}


# The test machine's cores are shared: one torch thread avoids stalls in contended thread pools.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("bench")
    original = CifarVGG(CFG).eval()
    pruned = prune(original, torch.randn(1, *SIZE), target_macs=0.5).model
    return SimpleNamespace(
        dir=d,
        original=original,
        pruned=pruned,
        original_onnx=export_onnx(original, d / "original.onnx", SIZE),
        pruned_onnx=export_onnx(pruned, d / "model.onnx", SIZE),
    )


@pytest.fixture(scope="module")
def result(models):
    return benchmark_latency(
        [models.pruned_onnx.path],
        baseline=models.original_onnx.path,
        threads=(1, 2),
        runs=4,
        warmup=1,
        torch_models={"original": models.original, "pruned": models.pruned},
        torch_baseline="original",
    )


def test_result_schema_and_comparisons(result, models):
    assert result.baseline == "original" and result.input_shape == (1, *SIZE) and result.threads == (1, 2)
    assert {(m.variant, m.runtime, m.threads) for m in result.measurements} == {
        (v, r, t) for v in ("original", "model") for r in ("onnxruntime",) for t in (1, 2)
    } | {(v, "pytorch", t) for v in ("original", "pruned") for t in (1, 2)}
    for m in result.measurements:
        assert len(m.samples_ms) == 4 and all(s > 0 for s in m.samples_ms)
        assert m.min_ms <= m.median_ms <= m.p90_ms
    for t in (1, 2):
        base, pruned = result.measurement("original", t), result.measurement("model", t)
        assert base.speedup == pytest.approx(1.0) and base.efficiency == pytest.approx(1.0)
        assert pruned.speedup == pytest.approx(base.median_ms / pruned.median_ms)
        assert pruned.macs_reduction == pytest.approx(models.original_onnx.macs / models.pruned_onnx.macs)
        assert pruned.efficiency == pytest.approx(pruned.speedup / pruned.macs_reduction)
        eager = result.measurement("pruned", t, runtime="pytorch")
        # eager MACs are counted by Torch-Pruning on the module: the same count export stored in the file
        assert eager.macs == pytest.approx(models.pruned_onnx.macs)
        assert eager.speedup == pytest.approx(result.measurement("original", t, "pytorch").median_ms / eager.median_ms)
    assert any("below the protocol" in n for n in result.notes)
    env = result.environment
    assert env["cpus_available"] >= 1 and {"onnxruntime", "torch", "onnx"} <= set(env["versions"])
    with pytest.raises(KeyError, match="no measurement"):
        result.measurement("model", 3)


def test_json_markdown_table_and_plot_files(result, tmp_path):
    result.to_json(tmp_path / "bench.json")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["schema"] == SCHEMA and data["runs"] == 4 and data["threads"] == [1, 2]
    assert {"cpu", "cpus_available", "versions", "load_average"} <= set(data["environment"])
    assert all(set(m) == MEASUREMENT_KEYS for m in data["measurements"])
    assert {v["name"] for v in data["variants"]} == {"original", "model", "pruned"}
    md = result.to_markdown()
    assert md.count("| original |") == 2 and "efficiency" in md
    table = result.table()
    assert "median ms" in table and "efficiency" in table
    path = result.plot(tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\.png"):
        result.plot(tmp_path / "bench.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.png"]  # no temp files left


def test_without_baseline_or_metadata(models, tmp_path):
    stripped = onnx.load(str(models.pruned_onnx.path))
    del stripped.metadata_props[:]
    onnx.save(stripped, tmp_path / "foreign.onnx")
    res = benchmark_latency({"a": models.pruned_onnx.path, "b": tmp_path / "foreign.onnx"}, threads=1, runs=2,
                            warmup=0)
    assert all(m.speedup is None and m.efficiency is None for m in res.measurements)
    assert res.measurement("b", 1).macs is None and res.measurement("a", 1).macs == models.pruned_onnx.macs
    assert any("no baseline" in n for n in res.notes) and any("b: no pfgdf.macs" in n for n in res.notes)
    res.plot(tmp_path / "p.png")  # variants without MACs are left out of the plot, not an error


def test_dynamic_batch_model_runs_at_batch_one(models, tmp_path):
    dyn = export_onnx(models.pruned, tmp_path / "dyn.onnx", SIZE, dynamic_batch=True, exporter="torchscript")
    res = benchmark_latency([dyn.path], baseline=models.original_onnx.path, threads=[1], runs=2, warmup=0)
    assert res.input_shape == (1, *SIZE) and res.measurement("dyn", 1).median_ms > 0


def test_bad_arguments(models, tmp_path):
    path, base = models.pruned_onnx.path, models.original_onnx.path
    cases = [
        ({"models": [tmp_path / "missing.onnx"]}, FileNotFoundError, "no file"),
        ({"models": [path], "baseline": tmp_path / "missing.onnx"}, FileNotFoundError, "baseline"),
        ({"models": [path], "threads": [0]}, ValueError, "threads"),
        ({"models": [path], "threads": []}, ValueError, "threads"),
        ({"models": [path], "runs": 0}, ValueError, "runs"),
        ({"models": [path], "warmup": -1}, ValueError, "warmup"),
        ({"models": [path], "input_size": (3, 64, 64)}, ValueError, "input size mismatch"),
        ({"models": [path], "baseline": path}, ValueError, "given twice"),
        ({"models": [path], "torch_models": {"x": "resnet18"}}, ValueError, "torch.nn.Module"),
        ({"models": [path], "torch_baseline": "nothing"}, ValueError, "torch_baseline"),
        ({"models": []}, ValueError, "at least one"),
        ({"models": 42}, ValueError, "models must be"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            benchmark_latency(**kwargs)
    other = export_onnx(models.pruned, tmp_path / "other.onnx", (3, 48, 48), exporter="torchscript")
    with pytest.raises(ValueError, match="input size mismatch"):
        benchmark_latency([path, other.path], baseline=base, runs=1)
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ValueError, match="cannot load"):
        benchmark_latency([tmp_path / "text.onnx"], runs=1)
    with pytest.raises(ValueError, match=r"\.onnx or \.ort"):
        benchmark_latency([Path(__file__)], runs=1)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_bench_writes_report_plot_markdown(models, tmp_path, capsys):
    capsys.readouterr()
    rc = main(["bench", str(models.pruned_onnx.path), "--baseline", str(models.original_onnx.path),
               "--threads", "1", "--runs", "3", "--warmup", "0", "--report", str(tmp_path / "b.json"),
               "--plot", str(tmp_path / "b.png"), "--markdown", str(tmp_path / "b.md"), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "efficiency" in captured.out and "original" in captured.out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["schema"] == SCHEMA and data["baseline"] == "original" and data["threads"] == [1]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model |" in (tmp_path / "b.md").read_text()


def test_cli_bench_torch_eager(models, tmp_path, capsys):
    from pfgdf_plugin import save_pruned

    pt = save_pruned(models.pruned, tmp_path / "pruned.pt", metadata={"input_size": list(SIZE)})
    capsys.readouterr()
    rc = main(["bench", str(models.pruned_onnx.path), "--torch", str(pt), "--threads", "1", "--runs", "2",
               "--warmup", "0", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "pruned (torch)" in captured.out and "no PyTorch baseline" in captured.err
    macs, _ = tp.utils.count_ops_and_params(models.pruned, torch.randn(1, *SIZE))
    eager = [m for m in json.loads((tmp_path / "r.json").read_text())["measurements"] if m["runtime"] == "pytorch"]
    assert eager and eager[0]["macs"] == pytest.approx(macs)


def test_cli_bench_errors(models, tmp_path, capsys):
    model = str(models.pruned_onnx.path)
    before = models.pruned_onnx.path.read_bytes()

    def fails(*args: str, match: str) -> None:
        capsys.readouterr()
        assert main(["bench", *args]) == 2
        assert match in capsys.readouterr().err

    fails(model, "--report", model, match="overwrite an input")
    fails(model, "--plot", str(tmp_path / "b.jpg"), match="--plot must be a file path ending in .png")
    fails(model, "--report", str(tmp_path / "same"), "--markdown", str(tmp_path / "same"), match="same file")
    fails(str(tmp_path / "missing.onnx"), match="no file")
    fails(model, "--threads", "0", match="--threads")
    fails(model, "--runs", "0", match="--runs")
    fails(model, "--input-size", "64", "--runs", "1", match="input size mismatch")
    fails(model, "--report", str(tmp_path), match="is a directory")
    assert models.pruned_onnx.path.read_bytes() == before
    assert list(tmp_path.iterdir()) == []


def test_vgg16_recipe_quick(tmp_path, capsys):
    """The recipe end to end at 1/8 width: the paper's filter share, its table, its JSON."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe", Path(__file__).parents[1] / "examples" /
                                                  "vgg16_cifar_pfgdf.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "out"
    assert recipe.main(["--quick", "--no-int8", "--output-dir", str(out), "--output", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())
    assert abs(summary["filters_removed"] - recipe.PAPER["filters_removed"]) < 0.01
    assert 0.8 < summary["params_reduction"] < 1 and summary["macs_reduction"] > 0.7
    assert summary["latency_original_ms"] > 0 and summary["latency_pruned_ms"] > 0
    assert summary["latency_reduction"] == pytest.approx(
        1 - summary["latency_pruned_ms"] / summary["latency_original_ms"])
    assert summary["benchmark"]["schema"] == SCHEMA
    assert {p.name for p in out.iterdir()} >= {"original.onnx", "model.onnx", "model.ort"}
    assert "conv filters removed" in capsys.readouterr().out
