"""The `pfgdf` command through a real subprocess, and the JSON report's schema."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pfgdf_plugin.cli import COMMANDS, main


def pfgdf(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pfgdf_plugin.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


REPORT_KEYS = {
    "alpha": float, "target": dict, "search_steps": int, "criterion": str, "ranked_by": str,
    "macs_before": float, "macs_after": float, "macs_kept": float, "params_before": int, "params_after": int,
    "params_kept": float, "seconds": float, "groups": list, "layers": list, "ignored": dict,
}


def test_prune_inspect_end_to_end(tmp_path):
    out, report = tmp_path / "p.pt", tmp_path / "r.json"
    run = pfgdf("prune", "--model", "resnet18", "--num-classes", "10", "--input-size", "64", "--target-macs",
                "0.5", "--output", str(out), "--report", str(report))
    assert run.returncode == 0, run.stderr
    assert "group (root layer)" in run.stdout and "MACs" in run.stdout and "fc (classifier)" in run.stdout
    assert "pruning resnet18" in run.stderr
    data = json.loads(report.read_text())
    for key, kind in REPORT_KEYS.items():
        assert isinstance(data[key], kind), key
    assert data["target"] == {"kind": "macs", "keep": 0.5}
    assert abs(data["macs_kept"] - 0.5) <= 0.01
    assert set(data["groups"][0]) == {"root", "layers", "channels_before", "channels_after", "kept"}
    assert set(data["layers"][0]) == {"name", "type", "in_before", "in_after", "out_before", "out_after"}

    shown = pfgdf("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "output: (1, 10)" in shown.stdout
    assert "timm_model: resnet18" in shown.stdout


def test_unknown_model_lists_close_matches(tmp_path):
    run = pfgdf("prune", "--model", "resnet1", "--alpha", "1", "--output", str(tmp_path / "x.pt"))
    assert run.returncode == 2
    assert "unknown timm model 'resnet1'" in run.stderr and "resnet18" in run.stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["--alpha", "0"], "--alpha must be a finite number > 0"),
    (["--target-macs", "1.5"], r"--target-macs must be a number in \(0, 1\]"),
    (["--alpha", "1", "--target-macs", "0.5"], "not allowed with argument"),
    (["--alpha", "1", "--statistic", "l3"], "invalid choice: 'l3'"),
    (["--alpha", "1", "--input-size", "0x5"], "--input-size must be SIZE, HxW or CxHxW"),
    (["--alpha", "1", "--input-size", "100000"], "--input-size must be at most 4096 channels and 8192 pixels"),
    (["--alpha", "1", "--num-classes", "0"], "--num-classes must be an integer >= 1, got 0"),
    (["--alpha", "1", "--num-classes", "-5"], "--num-classes must be an integer >= 1, got -5"),
    (["--alpha", "1", "--in-chans", "0"], r"--in-chans must be an integer in \[1, 4096\], got 0"),
    (["--alpha", "1", "--seed", "-1"], "--seed must be an integer >= 0"),
])
def test_bad_arguments_are_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--model", "resnet18", "--output", str(tmp_path / "x.pt"), *args])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x.pt").exists()


def test_output_may_not_overwrite_the_input(tmp_path):
    out = tmp_path / "p.pt"
    assert pfgdf("prune", "--model", "resnet18", "--input-size", "32", "--alpha", "1", "--output", str(out),
                 "--quiet").returncode == 0
    before = out.read_bytes()
    run = pfgdf("prune", "--checkpoint", str(out), "--alpha", "1", "--output", str(out))
    assert run.returncode == 2 and "would overwrite an input" in run.stderr
    assert out.read_bytes() == before


def test_help_lists_every_subcommand(capsys):
    run = pfgdf("--help")  # once through the real entry point
    assert run.returncode == 0
    for name in COMMANDS:
        assert name in run.stdout
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: pfgdf " + name in capsys.readouterr().out


def test_demo_runs_the_pipeline_on_real_data(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--finetune-epochs", "1", "--input-size", "1x8x8", "--latency-runs", "5",
                 "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    acc = report["accuracy"]
    assert set(acc) == {"unpruned", "pruned_before_recalibration", "pruned_after_recalibration",
                        "pruned_after_finetuning"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert abs(report["macs"]["after"] / report["macs"]["before"] - 0.5) <= 0.01
    assert (tmp_path / "report.md").read_text().startswith("# pfgdf demo")
    assert "val accuracy (digits)" in capsys.readouterr().out
    assert all(v <= 1e-4 for v in report["onnx_parity_relative_error"].values())
    assert report["latency_ms_1_thread"]["pruned"]["median"] > 0
    assert {p.name for p in tmp_path.iterdir()} >= {"report.json", "report.md", "original.pt", "pruned.pt",
                                                    "original.onnx", "pruned.onnx", "latency.png"}


def test_round_to_auto_uses_the_recommended_multiple(tmp_path, capsys):
    from pfgdf_plugin.measure.platform import recommended_round_to

    report = tmp_path / "r.json"
    assert main(["prune", "--model", "resnet18", "--input-size", "32", "--alpha", "1", "--round-to", "auto",
                 "--output", str(tmp_path / "p.pt"), "--report", str(report), "--quiet"]) == 0
    multiple = recommended_round_to()
    for g in json.loads(report.read_text())["groups"]:
        assert g["channels_after"] % multiple == 0 or g["channels_after"] == g["channels_before"]


def test_alpha_that_keeps_little_warns_and_a_target_does_not(tmp_path):
    common = ["prune", "--model", "resnet18", "--input-size", "64", "--quiet", "--threads", "1"]
    low = pfgdf(*common, "--alpha", "1.0", "--output", str(tmp_path / "a.pt"), "--report", str(tmp_path / "a.json"))
    assert low.returncode == 0, low.stderr
    kept = json.loads((tmp_path / "a.json").read_text())["macs_kept"]
    assert kept < 0.25  # the README's old first example: alpha 1.0 on resnet18
    assert f"pfgdf prune: warning: --alpha 1 kept only {kept:.1%} of the MACs" in low.stderr
    assert "--target-macs" in low.stderr
    target = pfgdf(*common, "--target-macs", "0.5", "--output", str(tmp_path / "t.pt"))
    assert target.returncode == 0, target.stderr
    assert "warning" not in target.stderr


# ---------------------------------------------------------------- the README's shell commands

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """Every ``pfgdf ...`` line of README.md's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip().startswith("pfgdf ")]


def written_paths(argv: list[str]) -> list[str]:
    """The files and folders one command writes, from its parsed arguments (a recipe's own output_dir for run)."""
    from pfgdf_plugin.cli import build_parser
    from pfgdf_plugin.recipes import Recipe

    args = build_parser().parse_args(argv[1:])
    paths = [getattr(args, k, None) for k in ("output", "report", "plot", "markdown")]
    folder = getattr(args, "output_dir", None)
    if args.command == "run" and folder is None:
        folder = Recipe.from_yaml(ROOT / args.config).output_dir
    # A folder as a file inside it: git matches a `name/` pattern only to what it knows is a directory.
    return [str(p) for p in paths if p] + ([f"{folder}/report.json"] if folder else [])


def test_readme_commands_parse_and_their_outputs_are_ignored_and_cleaned():
    commands = readme_commands()
    assert len(commands) >= 8 and {c[1] for c in commands} >= {"prune", "inspect", "export", "bench", "run"}
    assert not any("--alpha" in c for c in commands), "the README's examples prune to a target"
    clean = re.search(r"^clean:\n\trm -rf (.*)$", (ROOT / "Makefile").read_text(), flags=re.M)
    cleaned = set(clean.group(1).split())
    written = [p for c in commands for p in written_paths(c)] + ["demo-out/report.json"]
    for path in written:
        assert not Path(path).is_absolute() and ".." not in Path(path).parts, path
        assert Path(path).parts[0] in cleaned, f"make clean does not remove {path}"
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert ignored.returncode == 0, f".gitignore does not cover {path}"
