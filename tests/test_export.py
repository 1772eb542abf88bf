"""export_onnx / export_ort / quantize_int8 and `pfgdf export`: parity, INT8 agreement, files, clear errors."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin import prune, save_pruned
from pfgdf_plugin.cli import main
from pfgdf_plugin.data import load_dataset
from pfgdf_plugin.deploy.int8 import INT8_AGREEMENT_THRESHOLD, quantize_int8
from pfgdf_plugin.deploy.onnx import export_onnx, read_model_metadata
from pfgdf_plugin.deploy.ort import export_ort
from pfgdf_plugin.deploy.parity import PARITY_TOLERANCE, ParityError
from pfgdf_plugin.models.timm import create_model
from pfgdf_plugin.models.zoo import CifarVGG
from pfgdf_plugin.recovery import recalibrate_bn

SIZE = (3, 64, 64)
SMALL_VGG = (16, "M", 32, "M", 64)


# The test machine's cores are shared: one torch thread avoids stalls in contended thread pools.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torch_out(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _ort_out(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def _independent_parity(path: Path, model: nn.Module, size, seed: int = 123) -> float:
    """Fresh random inputs (not the export's own), a fresh session, the issue's metric."""
    x = np.random.default_rng(seed).standard_normal((3, *size)).astype(np.float32)
    expected, got = _torch_out(model, x), _ort_out(path, x)
    # the outputs must depend on the input, or any parity number would be vacuous
    assert np.abs(expected[0] - expected[1]).max() > 1e-3 * np.abs(expected).max()
    return float(np.abs(expected - got).max() / np.abs(expected).max())


def _recalibrate_bn(model: nn.Module, size) -> nn.Module:
    """BatchNorm statistics from real images, so random-weight activations keep their scale through depth."""
    images = load_dataset("mnist", size, limit=128, seed=1).tensors[0]
    recalibrate_bn(model.eval(), [images[i : i + 64] for i in range(0, len(images), 64)])
    return model


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    original = _recalibrate_bn(create_model("resnet18", num_classes=10), SIZE)
    pruned = _recalibrate_bn(prune(original, torch.randn(1, *SIZE), target_macs=0.5).model, SIZE)
    d = tmp_path_factory.mktemp("resnet")
    return SimpleNamespace(
        dir=d,
        models={"original": original, "pruned": pruned},
        onnx={
            "original": export_onnx(original, d / "original.onnx", SIZE),
            "pruned": export_onnx(pruned, d / "model.onnx", SIZE),
        },
    )


@pytest.mark.parametrize("variant", ["original", "pruned"])
def test_onnx_parity_resnet18(resnet, variant):
    out = resnet.onnx[variant]
    assert out.path.is_file() and out.opset == 18 and out.exporter == "dynamo"
    onnx.checker.check_model(str(out.path))
    assert out.parity.passed and out.parity.relative_error <= PARITY_TOLERANCE
    assert _independent_parity(out.path, resnet.models[variant], SIZE) <= PARITY_TOLERANCE
    macs, params = tp.utils.count_ops_and_params(resnet.models[variant], torch.randn(1, *SIZE))
    meta = read_model_metadata(out.path)
    assert float(meta["macs"]) == pytest.approx(macs) and int(meta["params"]) == params
    assert out.size_bytes == out.path.stat().st_size


def test_pruned_export_is_smaller(resnet):
    assert resnet.onnx["pruned"].macs < 0.55 * resnet.onnx["original"].macs
    assert resnet.onnx["pruned"].size_bytes < 0.6 * resnet.onnx["original"].size_bytes


@pytest.mark.parametrize("variant", ["original", "pruned"])
def test_ort_format_parity_resnet18(resnet, variant, tmp_path):
    out = export_ort(resnet.onnx[variant].path, tmp_path, reference=resnet.models[variant],
                     check_usability=variant == "pruned")
    assert out.path == tmp_path / f"{resnet.onnx[variant].path.stem}.ort" and out.path.is_file()
    assert out.parity.reference == "pytorch" and out.parity.passed
    assert _independent_parity(out.path, resnet.models[variant], SIZE) <= PARITY_TOLERANCE
    ops = out.config_path.read_text()
    assert "Conv" in ops and "ai.onnx" in ops
    if variant == "pruned":
        assert [u.ep for u in out.usability] == ["NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"]
        assert all(0 < u.supported_nodes <= u.nodes for u in out.usability)
        assert all(u.suitability in ("YES", "MAYBE", "NO") for u in out.usability)
        assert "NNAPI" in out.usability_log
    # the .ort file keeps the pfgdf metadata the benchmark needs
    assert read_model_metadata(out.path)["macs"] == read_model_metadata(resnet.onnx[variant].path)["macs"]


def test_ort_without_reference_compares_with_onnx(resnet, tmp_path):
    out = export_ort(resnet.onnx["pruned"].path, tmp_path, target_platform="amd64", check_usability=False)
    assert out.parity.reference.startswith("onnxruntime on") and out.parity.passed
    assert out.usability == []


def test_mobilenetv3_pruned_onnx_and_ort_parity(tmp_path):
    torch.manual_seed(0)
    pruned = prune(create_model("mobilenetv3_small_050", num_classes=10), torch.randn(1, *SIZE),
                   target_macs=0.5).model.eval()
    onnx_out = export_onnx(pruned, tmp_path / "mnv3.onnx", SIZE)
    ort_out = export_ort(onnx_out.path, reference=pruned, check_usability=False)
    for path in (onnx_out.path, ort_out.path):
        assert _independent_parity(path, pruned, SIZE) <= PARITY_TOLERANCE


def test_dynamic_batch(tmp_path):
    model = _recalibrate_bn(CifarVGG(SMALL_VGG), (3, 32, 32))
    out = export_onnx(model, tmp_path / "dyn.onnx", (3, 32, 32), dynamic_batch=True)
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)
    x = np.random.default_rng(5).standard_normal((5, 3, 32, 32)).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = _torch_out(model, x)
    assert np.abs(got - expected).max() / np.abs(expected).max() <= PARITY_TOLERANCE


def test_int8_agrees_with_float(resnet, tmp_path):
    src = resnet.onnx["pruned"]
    q = quantize_int8(src.path, tmp_path / "model.int8.onnx", "digits")
    assert q.images == 160 and q.float_classes > 1  # more than one class, or agreement would be vacuous
    assert q.top1_agreement >= INT8_AGREEMENT_THRESHOLD
    assert q.size_ratio < 0.35 and q.size_bytes == q.path.stat().st_size
    model_q = onnx.load(str(q.path))
    onnx.checker.check_model(model_q)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model_q.graph.node}
    # per-channel: some weight has one scale per output channel
    inits = {i.name: i for i in model_q.graph.initializer}
    scales = [inits[n.input[1]] for n in model_q.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)
    meta = read_model_metadata(q.path)
    assert meta["variant"] == "int8" and meta["macs"] == read_model_metadata(src.path)["macs"]
    assert src.path.is_file()  # the float model is still there, untouched


def test_parity_failure_writes_nothing(tmp_path):
    target = tmp_path / "strict.onnx"
    with pytest.raises(ParityError, match="not written"):
        export_onnx(_recalibrate_bn(CifarVGG(SMALL_VGG), (3, 32, 32)), target, (3, 32, 32), tolerance=1e-15,
                    exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": (1, 32, 32)}, "input_size"),
        ({"input_size": (3, 0, 32)}, "input_size"),
        ({"input_size": 32}, "input_size"),
        ({"opset": 7}, "opset"),
        ({"exporter": "jit"}, "exporter"),
        ({"tolerance": -1.0}, "tolerance"),
        ({"parity_samples": 0}, "parity_samples"),
        ({"dynamic_batch": "yes"}, "dynamic_batch"),
    ],
)
def test_export_onnx_bad_arguments_leave_file_untouched(tmp_path, kwargs, match):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's file")
    args = {"input_size": (3, 32, 32)} | kwargs
    size = args.pop("input_size")
    with pytest.raises(ValueError, match=match):
        export_onnx(CifarVGG(SMALL_VGG), target, size, **args)
    assert target.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_onnx_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"ending in \.onnx"):
        export_onnx(CifarVGG(SMALL_VGG), tmp_path / "model.onx", (3, 32, 32))
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx(CifarVGG(SMALL_VGG), tmp_path / "dir.onnx", (3, 32, 32))
    with pytest.raises(ValueError, match="torch.nn.Module"):
        export_onnx("resnet18", tmp_path / "m.onnx", (3, 32, 32))


def test_export_ort_and_int8_bad_inputs(resnet, tmp_path):
    src = resnet.onnx["pruned"].path
    with pytest.raises(FileNotFoundError, match="no file"):
        export_ort(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        export_ort(garbage, tmp_path)
    with pytest.raises(ValueError, match="target_platform"):
        export_ort(src, tmp_path, target_platform="x86")
    before = src.read_bytes()
    with pytest.raises(ValueError, match="overwrite an input"):
        quantize_int8(src, src, "digits")
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        quantize_int8(src, tmp_path / "q.onnx", tmp_path / "no-such-images")
    with pytest.raises(ValueError, match="activation_type"):
        quantize_int8(src, tmp_path / "q.onnx", "digits", activation_type="int4")
    with pytest.raises(ValueError, match="calibration must be"):
        quantize_int8(src, tmp_path / "q.onnx", 42)
    assert src.read_bytes() == before
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.glob("*.ort"))


def test_no_temporary_files_left(resnet):
    assert not [p.name for p in resnet.dir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# ----------------------------------------------------------------------------------------------- CLI


def test_healthy_parity_check_is_not_weak_and_measures_the_spread(resnet):
    """output_spread against an independent float64 run of the model on the export's own inputs."""
    parity = resnet.onnx["pruned"].parity
    x = torch.randn(parity.samples, *SIZE, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        y = copy.deepcopy(resnet.models["pruned"]).double().eval()(x)
    expected = float((y - y[:1]).abs().max() / y.abs().max())
    assert parity.output_spread == pytest.approx(expected, rel=1e-4) and parity.output_spread > 1e-2
    assert parity.weakness is None and str(parity).endswith(": ok")
    assert resnet.onnx["pruned"].to_dict()["parity"]["weakness"] is None


def _tiny_output_vgg() -> nn.Module:
    """Outputs about 1e-6, as random-weight efficientnet_b0 gives (1.8e-5): a pass there proves little."""
    model = CifarVGG(SMALL_VGG).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(1e-6)
        model.classifier.bias.zero_()
    return model


class _AlmostConstant(nn.Module):
    """Its output is its bias, whatever the input (to within 1e-9)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)
        with torch.no_grad():
            self.head.weight.fill_(1e-9)
            self.head.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("make, reason", [
    (_tiny_output_vgg, "outputs at most"),
    (_AlmostConstant, "outputs almost the same for every input"),
])
def test_weak_parity_checks_are_flagged(tmp_path, make, reason):
    out = export_onnx(make(), tmp_path / "m.onnx", (3, 32, 32), exporter="torchscript")
    assert out.parity.passed and out.parity.weakness.startswith(reason)
    assert str(out.parity).endswith(": ok, but weak")
    assert out.to_dict()["parity"]["weakness"] == out.parity.weakness


def test_cli_export_warns_about_a_weak_parity_check(tmp_path, capsys):
    path = save_pruned(_tiny_output_vgg(), tmp_path / "tiny.pt", metadata={"input_size": [3, 32, 32]})
    capsys.readouterr()
    assert main(["export", str(path), "--output-dir", str(tmp_path / "out"), "--exporter", "torchscript",
                 "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "ok, but weak" in stdout and f"warning: {tmp_path / 'out' / 'model.onnx'}: weak parity check" in stdout
    report = json.loads((tmp_path / "out" / "export.json").read_text())
    assert report["onnx"]["parity"]["weakness"].startswith("outputs at most")


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    path = d / "pruned.pt"
    assert main(["prune", "--model", "resnet18", "--num-classes", "10", "--input-size", "32", "--target-macs",
                 "0.5", "--output", str(path), "--quiet"]) == 0
    return path


def test_cli_export_all_formats(pruned_file, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "out"
    rc = main(["export", str(pruned_file), "--format", "onnx", "--format", "ort", "--int8", "digits",
               "--calib-batches", "1", "--output-dir", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert rc == 0
    for name in ("model.onnx", "original.onnx", "model.ort", "model.required_operators.config",
                 "model.int8.onnx", "model.int8.ort", "required_operators.config", "export.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "export.json").read_text())
    assert report["onnx"]["parity"]["passed"] and report["original"]["parity"]["passed"]
    assert report["ort"]["parity"]["reference"] == "pytorch" and report["ort"]["parity"]["passed"]
    assert report["int8"]["images"] == 32 and "not an accuracy" in report["int8"]["top1_agreement_note"]
    assert report["macs_reduction"] == pytest.approx(report["original"]["macs"] / report["onnx"]["macs"])
    assert 1.8 < report["macs_reduction"] < 2.2
    assert "not an accuracy" in stdout and "NNAPI" in stdout
    assert read_model_metadata(out / "original.onnx")["variant"] == "original"
    assert read_model_metadata(out / "model.onnx")["timm_model"] == "resnet18"


def test_cli_export_without_timm_metadata_skips_baseline(tmp_path, capsys):
    model = prune(CifarVGG(SMALL_VGG), torch.randn(1, 3, 32, 32), target_macs=0.5).model
    path = save_pruned(model, tmp_path / "vgg.pt", metadata={"input_size": [3, 32, 32]})
    capsys.readouterr()
    assert main(["export", str(path), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    assert "no baseline" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.onnx").is_file() and not (tmp_path / "out" / "original.onnx").exists()
    assert json.loads((tmp_path / "out" / "export.json").read_text())["baseline_note"].startswith("no baseline")


def test_cli_export_errors(pruned_file, tmp_path, capsys):
    out = tmp_path / "out"

    def fails(*args: str, match: str) -> None:
        capsys.readouterr()
        try:
            code = main(["export", *args])
        except SystemExit as exit_:  # a bad value that argparse itself refuses (the option's type)
            code = exit_.code
        assert code == 2
        assert match in capsys.readouterr().err

    fails(str(tmp_path / "missing.pt"), "--output-dir", str(out), match="no model file")
    fails(str(pruned_file), "--output-dir", str(out), "--input-size", "1x32x32", match="--input-size")
    fails(str(pruned_file), "--output-dir", str(out), "--int8", str(tmp_path / "nope"), match="nope")
    fails(str(pruned_file), "--output-dir", str(out), "--calib-batches", "0", "--int8", "digits",
          match="--calib-batches")
    assert not out.exists()  # nothing was written by any of the failures above
    (tmp_path / "afile").write_text("x")
    fails(str(pruned_file), "--output-dir", str(tmp_path / "afile"), match="not a directory")
    # an input sitting where an output would go is refused, and left as it was
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "model.onnx").write_bytes(pruned_file.read_bytes())
    fails(str(clash / "model.onnx"), "--output-dir", str(clash), match="overwrite an input")
    assert (clash / "model.onnx").read_bytes() == pruned_file.read_bytes()
    no_size = save_pruned(CifarVGG(SMALL_VGG), tmp_path / "nosize.pt")
    fails(str(no_size), "--output-dir", str(out), match="--input-size")


def test_export_bundle_library_call(tmp_path):
    from pfgdf_plugin.deploy import BundleConfig, export_bundle
    from pfgdf_plugin.deploy.report import bundle_table

    path = save_pruned(CifarVGG(SMALL_VGG), tmp_path / "vgg.pt", metadata={"input_size": [3, 32, 32]})
    with pytest.raises(ValueError, match="calib_batches must be an integer >= 1"):
        export_bundle(path, tmp_path / "out", BundleConfig(calibration="digits", calib_batches=0))
    with pytest.raises(ValueError, match="input_size 1x32x32: the model cannot run"):
        export_bundle(path, tmp_path / "out", BundleConfig(input_size=(1, 32, 32)))
    assert not (tmp_path / "out").exists()
    result = export_bundle(path, tmp_path / "out", BundleConfig(baseline=False))
    assert result.onnx.parity.passed and result.original is None and result.baseline_note is None
    assert json.loads(result.report_path.read_text()) == json.loads(json.dumps(result.to_dict(), default=str))
    assert str(result.onnx.path) in bundle_table(result)


def test_create_session_options(resnet):
    from pfgdf_plugin.deploy.session import create_session

    session = create_session(resnet.onnx["pruned"].path, threads=2, inter_op_threads=1, spinning=False,
                             optimization_level="basic", disabled_optimizers=["NchwcTransformer"])
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="optimization_level"):
        create_session(resnet.onnx["pruned"].path, optimization_level="max")
    with pytest.raises(ValueError, match="cannot load"):
        create_session(b"not a model")
