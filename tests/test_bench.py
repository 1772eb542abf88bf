"""benchmark_latency and `pfgdf bench`: result schema, written files, clear errors. No timing thresholds."""

import json
import statistics
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
from pfgdf_plugin.measure.report import figure, quartiles
from pfgdf_plugin.measure.result import SCHEMA, BenchmarkResult, Measurement, Variant
from pfgdf_plugin.models.zoo import CifarVGG
from pfgdf_plugin.recipes.report import summary_markdown, summary_table

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
        original_onnx=export_onnx(original, d / "original.onnx", SIZE, metadata={"variant": "original"}),
        # as `pfgdf export` names it: the file says "model", its metadata says what it is
        pruned_onnx=export_onnx(pruned, d / "model.onnx", SIZE, metadata={"variant": "pruned"}),
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
    res.plot(tmp_path / "p.png")  # variants without MACs are plotted without them, not an error


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


def test_plot_panels_share_y_and_name_what_each_model_is(result):
    """bench.png: the thread-count panels share their y-axis; "model" is labelled as the pruned model it is."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    try:
        one, two = fig.axes
        assert one.get_shared_y_axes().joined(one, two) and one.get_ylim() == two.get_ylim()
        labels = [t.get_text() for t in one.get_xticklabels()]
        assert [label.split("\n")[0] for label in labels] == ["original", "model (pruned)", "original (torch)",
                                                               "pruned (torch)"]
        texts = [t.get_text() for t in one.texts]
        speedup = result.measurement("model", 1).speedup
        assert texts[0].endswith("baseline") and texts[1].endswith(f"{speedup:.2f}x")
    finally:
        plt.close(fig)


def _measurement(variant, samples, speedup, macs=1e6):
    return Measurement(variant, "onnxruntime", 1, median_ms=statistics.median(samples),
                       p90_ms=sorted(samples)[int(0.9 * len(samples))], min_ms=min(samples),
                       mean_ms=statistics.fmean(samples), samples_ms=samples, macs=macs, speedup=speedup)


def test_plot_is_not_dwarfed_by_a_slow_tail_and_keeps_equal_macs_apart():
    """latency.png: p90 of ~5 ms hid medians of ~0.8 ms, and pruned / INT8 (same MACs) sat on one point."""
    import matplotlib.pyplot as plt

    tail = [0.8] * 30 + [0.7] * 10 + [5.0] * 10  # median 0.8, p90 5 ms: a busy machine's slow tail
    ms = [_measurement("original", [2 * x for x in tail], 1.0, macs=2e6), _measurement("pruned", tail, 2.0),
          _measurement("pruned.int8", [x + 0.1 for x in tail], 1.78)]
    variants = [Variant(m.variant, "onnxruntime", None, m.macs, None, None) for m in ms]
    res = BenchmarkResult(variants, ms, "original", None, (1, 3, 8, 8), (1,), 0, 50, False, {}, 1.0)
    assert [quartiles(m) for m in ms][1] == (0.8, 0.8)
    fig = figure(res)
    try:
        (ax,) = fig.axes
        assert ms[1].p90_ms == 5.0 and ax.get_ylim()[1] < 2.5  # the axis follows medians and quartiles
        centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
        assert len(set(centres)) == 3  # one bar each, even at equal MACs
        assert [t.get_text() for t in ax.texts] == ["1.600 ms\nbaseline", "0.800 ms\n2.00x", "0.900 ms\n1.78x"]
    finally:
        plt.close(fig)


def _job_summary(int8_ms, flags, finetuned=True):
    """A `run_job` summary with an INT8 export (the numbers of the issue: 0.891 ms INT8 vs 0.542 ms float)."""
    lat = {"original": {"median": 1.0, "p90": 1.2}, "pruned": {"median": 0.542, "p90": 0.6},
           "pruned.int8": {"median": int8_ms, "p90": 1.0}}
    return {
        "data": "digits", "val_data": None, "method": "pfgdf", "alpha": 0.5, "seconds": 80.0,
        "accuracy": {"unpruned": 0.99, "pruned_before_recalibration": 0.1, "pruned_after_recalibration": 0.8,
                     "pruned_after_finetuning": 0.97},
        "params": {"before": 1000, "after": 500}, "macs": {"before": 2_000_000, "after": 1_000_000},
        "latency_ms": {"1": lat}, "latency_threads": 1, "speedup": 1 / 0.542, "efficiency": 0.92,
        "finetune_history": [{"epoch": 1}] if finetuned else [],
        "exports": {"int8": {"top1_agreement": 0.975, "images": 160, "float_classes": 10, "max_abs_error": 0.5,
                             "max_abs_output": 10.0}},
        "benchmark": {"environment": {"cpu": "Some CPU", "isa_flags": flags}},
    }


def test_report_labels_the_pruned_column_and_puts_int8_quality_by_its_latency():
    md = summary_markdown(_job_summary(0.891, ["avx2"]))
    lines = md.splitlines()
    assert lines[0] == "| | unpruned | pruned, fine-tuned |"
    at = lines.index("| pruned, INT8 (ms) |  | 0.891 |")
    assert lines[at + 1] == "| INT8 agrees with float (top-1) |  | 97.5% |"
    assert lines[at + 2] == "| INT8 output error (max, rel.) |  | 5.0% |"
    assert "same top-1 class as the float model on 97.5% of 160 calibration images" in md
    assert summary_table(_job_summary(0.891, ["avx2"], finetuned=False)).splitlines()[0].split() == ["unpruned",
                                                                                                     "pruned"]


@pytest.mark.parametrize("flags, why", [
    (["avx2", "fma"], "This CPU has no 8-bit dot-product instructions"),
    (["avx2", "avx512_vnni"], "the likely cause is the model's size: at 1.00 MMACs per image"),
    (None, "INT8 pays off only on CPUs with 8-bit dot-product instructions"),
])
def test_report_says_plainly_when_int8_is_slower_and_why(flags, why):
    md = summary_markdown(_job_summary(0.891, flags))
    assert "INT8 is slower than float here: 0.891 vs 0.542 ms at 1 thread." in md and why in md
    assert "slower" not in summary_markdown(_job_summary(0.3, flags))


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


def test_a_recorded_latency_target_is_compared_with_what_was_measured(models, tmp_path):
    """An export's ``pfgdf.latency_target`` (from `pfgdf prune --target-speedup`) becomes a note: target vs achieved
    at the target's thread count, with the ratio; a malformed record is ignored."""
    from pfgdf_plugin.deploy.onnx import read_model_metadata

    target = {"goal": "speedup", "value": 1.5, "threads": 1, "target_speedup": 1.5, "predicted_speedup": 1.4}
    path = tmp_path / "targeted.onnx"
    export_onnx(models.pruned, path, SIZE, metadata={"variant": "pruned", "latency_target": target})
    assert json.loads(read_model_metadata(path)["latency_target"]) == target
    result = benchmark_latency([path], baseline=models.original_onnx.path, threads=1, runs=3, warmup=1)
    m = next(m for m in result.measurements if m.variant == "targeted")
    expected = (f"targeted: latency target 1.50x at 1 thread(s), achieved {m.speedup:.2f}x here "
                f"({m.speedup / 1.5:.3f} of the target); the table predicted 1.40x")
    assert expected in result.notes
    assert next(v for v in result.variants if v.name == "targeted").latency_target == target

    bad = tmp_path / "bad.onnx"
    export_onnx(models.pruned, bad, SIZE, metadata={"latency_target": {"threads": "one"}})
    result = benchmark_latency([bad], baseline=models.original_onnx.path, threads=1, runs=2, warmup=0)
    assert next(v for v in result.variants if v.name == "bad").latency_target is None
    assert not [n for n in result.notes if "latency target" in n]
