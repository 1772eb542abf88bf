"""CHIP scoring speed: this product's exact CI against the reference algorithm, and whole-network scoring.

Part 1 (per shape): the same float32 non-negative feature maps ``[batch, C, HW]`` are scored by

* ``fast``: `pfgdf_plugin.criteria.chip.math.channel_independence` on the whole batch (time / batch size);
* ``reference``: the algorithm of the CHIP repository, re-implemented here: per sample and per channel, a copy
  of the stored batch with that channel's row zeroed and one nuclear norm (an SVD) of the sample, float32;
* ``lean ref``: the same algorithm without the per-channel copy of the whole batch (only the sample is copied),
  the strongest form of one-SVD-per-channel.

Times are medians (fast: over ``--repeats`` runs; references: over ``--ref-samples`` samples). The error columns
compare against the float64 SVD of the definition on the reference's samples.

Part 2 (network): a CIFAR ResNet-56 (random weights) is calibrated on ``--samples`` 32x32 images in batches of
``--batch`` (hooks on every layer, CI streamed), then every dependency group is scored. Run in a fresh process
for a clean peak-memory reading. The reference's time for the same maps is estimated from its per-sample rate
measured for each map shape in this run.

Part 3 (``--hook-points``): which map the default scores. On a CIFAR ResNet-56 (random weights, random BatchNorm
statistics, 32 random images), every block's conv1 group (conv -> BN -> ReLU -> conv2, no residual coupling) is
scored with each ``feature`` and ranked against the float64 definition on the post-activation map (ReLU of the BN
output, taken with a plain hook): Spearman and the lowest half in common.

Part 4 (``--recalibration``): what one recalibration of a self-calibrating ``CHIPImportance(calibration=...)``
costs on timm's resnet18 (random weights) at 224x224, 5 batches of 32 digits resized, and what the per-call
"has the model changed" check costs.

    python examples/benchmarks/bench_chip.py --output bench-out/chip.json
    python examples/benchmarks/bench_chip.py --quick          # a small smoke run
    python examples/benchmarks/bench_chip.py --hook-points --recalibration --threads 1 --output bench-out/chip-13.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = ((16, 1024), (32, 256), (64, 64), (256, 196), (512, 49))


def reference_ci(stored: torch.Tensor, i: int) -> torch.Tensor:
    """CI of sample ``i`` as the CHIP repository computes it: one float32 nuclear norm per channel, each on a
    copy of the whole stored batch with that sample's row zeroed."""
    channels = stored.shape[1]
    out = torch.empty(channels)
    for j in range(channels):
        copy = stored.clone()
        copy[i, j, :] = 0
        out[j] = torch.linalg.matrix_norm(copy[i], ord="nuc")
    full = torch.linalg.matrix_norm(stored[i], ord="nuc")
    return full - out


def lean_reference_ci(sample: torch.Tensor) -> torch.Tensor:
    """The same algorithm copying only the sample: one float32 SVD (values only) per channel."""
    full = torch.linalg.svdvals(sample).sum()
    out = torch.empty(sample.shape[0])
    for j in range(sample.shape[0]):
        copy = sample.clone()
        copy[j] = 0
        out[j] = full - torch.linalg.svdvals(copy).sum()
    return out


def oracle_ci(sample: torch.Tensor) -> torch.Tensor:
    """The definition in float64: all channels' zeroed copies in one batched SVD."""
    a = sample.to(torch.float64)
    c = a.shape[0]
    copies = a.unsqueeze(0).repeat(c, 1, 1)
    copies[torch.arange(c), torch.arange(c)] = 0
    return torch.linalg.svdvals(a).sum() - torch.linalg.svdvals(copies).sum(-1)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x.double() - ref).abs() / ref.abs().clamp(min=1e-300)).max())


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def time_shape(c: int, hw: int, batch: int, repeats: int, ref_samples: int, seed: int) -> dict:
    from pfgdf_plugin.criteria.chip.math import channel_independence

    gen = torch.Generator().manual_seed(seed)
    stored = torch.randn(batch, c, hw, generator=gen).clamp_(min=0)  # post-ReLU-like, float32
    fast_times = []
    for _ in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        ci = channel_independence(stored)
        fast_times.append((time.perf_counter() - start) / batch)
    fast = median(fast_times[1:])
    ref_times, lean_times, err_fast, err_ref = [], [], 0.0, 0.0
    for i in range(ref_samples):
        start = time.perf_counter()
        ref = reference_ci(stored, i)
        ref_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        lean_reference_ci(stored[i])
        lean_times.append(time.perf_counter() - start)
        truth = oracle_ci(stored[i])
        err_fast = max(err_fast, rel_error(ci[i], truth))
        err_ref = max(err_ref, rel_error(ref, truth))
    reference, lean = median(ref_times), median(lean_times)
    return {
        "channels": c,
        "positions": hw,
        "batch": batch,
        "fast_ms_per_sample": fast * 1e3,
        "reference_ms_per_sample": reference * 1e3,
        "lean_reference_ms_per_sample": lean * 1e3,
        "speedup_vs_reference": reference / fast,
        "speedup_vs_lean_reference": lean / fast,
        "max_rel_error_fast": err_fast,
        "max_rel_error_reference_float32": err_ref,
        "fast_repeats": repeats,
        "reference_samples": ref_samples,
    }


def _memory_mib() -> tuple[float, float]:
    """(resident now, peak resident since the last reset) of this process in MiB, from /proc (Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def _reset_peak_memory() -> bool:
    """Restart the kernel's peak-RSS counter (Linux ``clear_refs``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def network_part(samples: int, batch: int, seed: int, calib_data: str | None) -> dict:
    """Calibrate and score a ResNet-56; returns times, memory and the maps' shapes (run in a fresh process)."""
    import warnings

    import torch_pruning as tp

    from pfgdf_plugin import CHIPImportance
    from pfgdf_plugin.models.layers import WEIGHTED_TYPES
    from pfgdf_plugin.models.zoo import CifarResNet

    warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
    torch.manual_seed(seed)
    model = CifarResNet(depth=56).eval()
    if calib_data:
        from pfgdf_plugin.data import calibration_loader

        loader = calibration_loader(calib_data, (3, 32, 32), batch_size=batch, num_batches=math.ceil(samples / batch))
        images = torch.cat([x for x, _ in loader])[:samples]
    else:
        images = torch.randn(samples, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    batches = list(images.split(batch))

    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            model(x)
    forward_only = time.perf_counter() - start

    imp = CHIPImportance()
    reset = _reset_peak_memory()
    rss_before, _ = _memory_mib()
    start = time.perf_counter()
    with imp.calibrate(model):
        for x in batches:
            model(x)
    calibrate = time.perf_counter() - start
    start = time.perf_counter()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=images[:1])
    groups = list(graph.get_all_groups(ignored_layers=[model.fc], root_module_types=list(WEIGHTED_TYPES)))
    scored = sum(imp(g) is not None for g in groups)
    scoring = time.perf_counter() - start
    _, peak = _memory_mib()
    stats = imp.stats
    return {
        "model": "CifarResNet(depth=56), random weights",
        "samples": samples,
        "batch": batch,
        "calib_data": calib_data or "random normal images",
        "forward_only_s": forward_only,
        "calibrate_s": calibrate,
        "score_groups_s": scoring,
        "wall_s": calibrate + scoring,
        "groups_scored": scored,
        "layers_hooked": len(stats),
        "rss_before_calibration_mib": rss_before,
        "peak_rss_during_calibration_mib": peak,
        "peak_rss_is_process_lifetime_peak": not reset,
        "max_mean_error_bound_rel": max(
            float((s.bound_sum / s.ci_sum.clamp(min=1e-300)).max()) for s in stats.values() if s.samples
        ),
        "maps": [[s.channels, s.positions, s.samples] for s in stats.values() if s.samples],
        "feature_bytes_reference_stores": sum(4 * s.channels * s.positions * s.samples for s in stats.values()),
    }


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    def ranks(v: torch.Tensor) -> torch.Tensor:  # average ranks for ties
        v = v.double()
        r = torch.empty_like(v)
        r[torch.argsort(v, stable=True)] = torch.arange(len(v), dtype=v.dtype)
        for value in v.unique():
            r[v == value] = r[v == value].mean()
        return r - r.mean()

    rx, ry = ranks(x), ranks(y)
    return float((rx * ry).sum() / ((rx * rx).sum() * (ry * ry).sum()).sqrt())


def hook_points(samples: int, seed: int) -> dict:
    """Each feature's ranking of plain-block channels against the definition on the post-activation map."""
    import torch_pruning as tp

    from pfgdf_plugin import CHIPImportance
    from pfgdf_plugin.models.zoo import CifarResNet

    torch.manual_seed(seed)
    model = CifarResNet(depth=56)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.3, 0.3), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.3, 0.3)):
                    t.uniform_(lo, hi)
    model.eval()
    x = torch.randn(samples, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    graph = tp.DependencyGraph().build_dependency(model, x[:1])
    imps = {f: CHIPImportance(feature=f, calibration=x) for f in ("input", "output", "norm")}
    rows: dict[str, list] = {f: [] for f in imps}
    for block in model.layers:
        post: list[torch.Tensor] = []
        handle = block.bn1.register_forward_hook(lambda _m, _i, out, post=post: post.append(out.clamp(min=0)))
        with torch.no_grad():
            model(x)
        handle.remove()
        maps = post[0].flatten(2)
        truth = torch.stack([oracle_ci(m) for m in maps]).mean(0)
        group = graph.get_pruning_group(block.conv1, tp.prune_conv_out_channels,
                                        idxs=list(range(block.conv1.out_channels)))
        half = len(truth) // 2
        for f, imp in imps.items():
            got = imp(group)
            common = len(set(torch.argsort(got)[:half].tolist()) & set(torch.argsort(truth)[:half].tolist()))
            rows[f].append({"channels": len(truth), "spearman": _spearman(got, truth), "common": common,
                            "half": half})
    out = {"model": "CifarResNet(depth=56), random weights and BN statistics", "samples": samples, "features": {}}
    print(f"\nhook points: {len(model.layers)} plain conv1 groups of ResNet-56, {samples} samples; ranking vs the "
          "float64 definition on the post-activation map")
    for f, r in rows.items():
        for c in sorted({row["channels"] for row in r}):
            sel = [row for row in r if row["channels"] == c]
            rho = [row["spearman"] for row in sel]
            summary = {"spearman_mean": sum(rho) / len(rho), "spearman_min": min(rho),
                       "lowest_half_common": sum(row["common"] for row in sel), "lowest_half": sum(row["half"] for
                                                                                                  row in sel)}
            out["features"].setdefault(f, {})[str(c)] = summary
            print(f"  feature={f:<7} {c:>3} ch x {len(sel)}: Spearman mean {summary['spearman_mean']:6.3f} min "
                  f"{summary['spearman_min']:6.3f}; lowest half in common {summary['lowest_half_common']} of "
                  f"{summary['lowest_half']}")
    return out


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def recalibration(batches: int, batch: int, size: int) -> dict:
    """One recalibration of a self-calibrating CHIP on timm resnet18, and the per-call change check's cost."""
    import timm
    import torch_pruning as tp

    from pfgdf_plugin import CHIPImportance
    from pfgdf_plugin.criteria.chip.state import StateKey, state_digest
    from pfgdf_plugin.data import calibration_loader

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    images = [x for x, _ in calibration_loader("digits", (3, size, size), batch_size=batch, num_batches=batches)]
    imp = CHIPImportance(calibration=images)
    graph = tp.DependencyGraph().build_dependency(model, images[0][:1])
    group = graph.get_pruning_group(model.layer1[0].conv1, tp.prune_conv_out_channels, idxs=list(range(64)))

    def forward() -> None:
        with torch.no_grad():
            for x in images:
                model(x)

    forward_s = _best_of(forward, 2)
    recal = []
    for _ in range(2):  # an in-place write, then the next call recalibrates
        with torch.no_grad():
            model.fc.bias.add_(1e-3)  # new values: the digest differs, so it recalibrates
        start = time.perf_counter()
        imp(group)
        recal.append(time.perf_counter() - start)
    key = StateKey.of(model)
    out = {
        "model": "timm resnet18, random weights", "input": [3, size, size], "batches": batches, "batch": batch,
        "data": "scikit-learn digits, resized", "forward_only_s": forward_s, "recalibration_s": min(recal),
        "calibrations": imp.calibrations,
        "unchanged_call_ms": 1e3 * _best_of(lambda: imp(group), 20),
        "state_key_build_ms": 1e3 * _best_of(lambda: StateKey.of(model), 20),
        "state_key_match_ms": 1e3 * _best_of(lambda: key.matches(model), 20),
        "state_digest_ms": 1e3 * _best_of(lambda: state_digest(model), 5),
    }
    print(f"\nrecalibration: resnet18 at {size}x{size}, {batches} batches of {batch} digits, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"  forward passes alone     {out['forward_only_s']:8.2f} s")
    print(f"  one recalibration        {out['recalibration_s']:8.2f} s  (forward passes + CI of every hooked map)")
    print(f"  a call, model unchanged  {out['unchanged_call_ms']:8.2f} ms (change check + scoring one group)")
    print(f"  state key: build {out['state_key_build_ms']:.3f} ms, match {out['state_key_match_ms']:.3f} ms; "
          f"value digest {out['state_digest_ms']:.1f} ms")
    return out


# ------------------------------------------------------------------------------------------------------------
# --study: which tensor to hook and how to normalise, decided by accuracy after pruning a trained network.


def _recalibrate_and_score(model, train_x, test_x, test_y, batch: int = 64) -> float:
    """BatchNorm statistics re-estimated on the training images (cumulative average), then test accuracy."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in train_x[:640].split(batch):
            model(x)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x in test_x.split(256)])
    return float((pred == test_y).float().mean())


class _Reversed:
    """A control: the same CHIP scores, highest pruned first."""

    def __init__(self, imp) -> None:
        self.imp = imp

    def __call__(self, group):
        scores = self.imp(group)
        return None if scores is None else -scores


STUDY_MODELS = {"vgg": "CifarVGG(32,32,M,64,64,M,128,128,M)", "resnet20": "CifarResNet(depth=20)"}


def _train(seed: int, epochs: int, size: int, arch: str):
    from pfgdf_plugin.data import load_dataset, split
    from pfgdf_plugin.models.zoo import CifarResNet, CifarVGG

    torch.manual_seed(seed)
    train, test = split(load_dataset("digits", (3, size, size), seed=seed))
    (train_x, train_y), (test_x, test_y) = train.tensors, test.tensors
    model = CifarVGG(cfg=(32, 32, "M", 64, 64, "M", 128, 128, "M")) if arch == "vgg" else CifarResNet(depth=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * math.ceil(len(train_x) / 64))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train_x)).split(64):
            loss = torch.nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model, train_x, test_x, test_y


def study(seeds: int, epochs: int, size: int, arch: str = "vgg") -> dict:
    """Per seed: train a small CIFAR-style VGG on scikit-learn digits, prune it with CHIP variants and baselines,
    re-estimate BatchNorm statistics (no fine-tuning) and measure test accuracy; mean and std over seeds."""
    import copy
    import warnings

    import torch_pruning as tp

    from pfgdf_plugin import CHIPImportance, prune

    warnings.filterwarnings("ignore")
    ratios, targets = (0.3, 0.5), (0.5, 0.3)
    runs: dict[str, list[list[float]]] = {}
    base = []
    start = time.perf_counter()
    for seed in range(seeds):
        model, train_x, test_x, test_y = _train(seed, epochs, size, arch)
        with torch.no_grad():
            base.append(float((model(test_x).argmax(1) == test_y).float().mean()))
        calib = list(train_x[:160].split(32))  # 5 batches of 32, as the reference calibrates
        example = train_x[:1]

        def calibrated(m, calib=calib, **kwargs):
            imp = CHIPImportance(**kwargs)
            with imp.calibrate(m):
                for x in calib:
                    m(x)
            return imp

        per_layer = {f"chip feature={f}": (lambda m, f=f: calibrated(m, feature=f))
                     for f in ("input", "norm", "output")}
        per_layer["chip input, highest CI first (control)"] = lambda m: _Reversed(calibrated(m, feature="input"))
        per_layer["L1 filter norm"] = lambda m: tp.importance.MagnitudeImportance(p=1)
        per_layer["random (2 draws)"] = None
        for name, make in per_layer.items():
            accs = []
            for ratio in ratios:
                draws = [0, 1] if make is None else [None]
                for draw in draws:
                    m = copy.deepcopy(model)
                    if draw is not None:
                        torch.manual_seed(1000 * seed + draw)
                    imp = tp.importance.RandomImportance() if make is None else make(m)
                    pruner = tp.pruner.MetaPruner(m, example, importance=imp, pruning_ratio=ratio,
                                                  global_pruning=False, ignored_layers=[m.get_classifier()])
                    pruner.step()
                    accs.append((ratio, _recalibrate_and_score(m, train_x, test_x, test_y)))
            runs.setdefault(f"same ratio | {name}", []).append(
                [sum(a for r, a in accs if r == ratio) / sum(1 for r, _ in accs if r == ratio) for ratio in ratios]
            )
        global_runs = {
            f"chip feature={f} normalization={n}": (lambda m, f=f, n=n: calibrated(m, feature=f, normalization=n))
            for f in ("input", "output") for n in ("rms", "mean")
        }
        global_runs["pfgdf (l1)"] = lambda m: None
        for name, make in global_runs.items():
            accs = []
            for target in targets:
                m = copy.deepcopy(model)
                result = prune(m, example, importance=make(m), target_macs=target, inplace=True)
                accs.append(_recalibrate_and_score(result.model, train_x, test_x, test_y))
            runs.setdefault(f"global MACs | {name}", []).append(accs)
        print(f"  study seed {seed}: trained and pruned ({time.perf_counter() - start:.0f} s so far)")

    def stats(rows: list[list[float]]) -> list[list[float]]:
        cols = list(zip(*rows, strict=True))
        return [[sum(c) / len(c), (sum((x - sum(c) / len(c)) ** 2 for x in c) / max(len(c) - 1, 1)) ** 0.5]
                for c in cols]

    out = {"model": STUDY_MODELS[arch], "data": f"digits {size}x{size}, 80/20 split",
           "seeds": seeds, "epochs": epochs, "accuracy_unpruned": base, "seconds": time.perf_counter() - start,
           "ratios": list(ratios), "targets": list(targets), "results": {k: stats(v) for k, v in runs.items()}}
    mean_base = sum(base) / len(base)
    print(f"\nstudy: {seeds} seeds, unpruned test accuracy {mean_base:.3f}; accuracy after pruning and BN "
          "re-estimation, no fine-tuning (mean +- std over seeds)")
    print(f"{STUDY_MODELS[arch]}; columns: prune {ratios[0]:.0%} / {ratios[1]:.0%} of every layer (same ratio), "
          f"or keep {targets[0]:.0%} / {targets[1]:.0%} of MACs (global)")
    for key, cols in out["results"].items():
        print(f"{key:<62}" + "".join(f"{m:9.3f} +-{s:5.3f}" for m, s in cols))
    return out


def hardware() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _parts_3_and_4(args: argparse.Namespace, result: dict) -> int:
    if args.hook_points:
        result["hook_points"] = hook_points(8 if args.quick else 32, args.seed)
    if args.recalibration:
        result["recalibration"] = recalibration(2, 4, 64) if args.quick else recalibration(5, 32, 224)
    result["hardware"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=None, help="write the results as JSON to this path")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    p.add_argument("--batch", type=int, default=128, help="maps per batch, as the reference stores them (128)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the fast method per shape (5)")
    p.add_argument("--ref-samples", type=int, default=3, help="samples the reference is timed on per shape (3)")
    p.add_argument("--samples", type=int, default=640, help="calibration samples for ResNet-56 (640)")
    p.add_argument("--calib-data", default=None, help="digits, mnist, an ImageFolder dir or a .pt file (random)")
    p.add_argument("--skip-network", action="store_true", help="only the per-shape comparison")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 16, 1 reference sample, 64 samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--study", action="store_true", help="also run the hook / normalisation study (trains a net)")
    p.add_argument("--study-only", action="store_true", help="only the study")
    p.add_argument("--study-epochs", type=int, default=8, help="training epochs of the study's network (8)")
    p.add_argument("--study-seeds", type=int, default=5, help="networks trained for the study (5)")
    p.add_argument("--hook-points", action="store_true", help="only part 3: each feature vs the post-activation map")
    p.add_argument("--recalibration", action="store_true", help="only part 4: one recalibration of resnet18 at 224")
    p.add_argument("--network-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.ref_samples, args.repeats, args.samples = 16, 1, 2, 64
    torch.set_num_threads(args.threads)

    if args.network_only:  # child process: print the network result as JSON
        print(json.dumps(network_part(args.samples, args.batch, args.seed, args.calib_data)))
        return 0

    result: dict = {"hardware": hardware(), "shapes": [], "network": None, "study": None}
    if args.hook_points or args.recalibration:
        return _parts_3_and_4(args, result)
    if args.study_only:
        result["study"] = {arch: study(args.study_seeds, args.study_epochs, 16, arch) for arch in STUDY_MODELS}
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    print(f"CPU: {result['hardware']['cpu']} ({result['hardware']['cpu_count']} cores), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    head = (f"{'C x HW':>10}  {'fast ms':>8}  {'ref ms':>9}  {'lean ms':>8}  {'x ref':>7}  {'x lean':>7}  "
            f"{'max rel err':>11}  {'ref f32 err':>11}")
    print(head)
    print("-" * len(head))
    for k, (c, hw) in enumerate(SHAPES):
        row = time_shape(c, hw, args.batch, args.repeats, args.ref_samples, args.seed + k)
        result["shapes"].append(row)
        print(f"{f'{c} x {hw}':>10}  {row['fast_ms_per_sample']:8.3f}  {row['reference_ms_per_sample']:9.1f}  "
              f"{row['lean_reference_ms_per_sample']:8.1f}  {row['speedup_vs_reference']:7.0f}  "
              f"{row['speedup_vs_lean_reference']:7.0f}  {row['max_rel_error_fast']:11.1e}  "
              f"{row['max_rel_error_reference_float32']:11.1e}")
    geo = math.exp(sum(math.log(r["speedup_vs_reference"]) for r in result["shapes"]) / len(SHAPES))
    geo_lean = math.exp(sum(math.log(r["speedup_vs_lean_reference"]) for r in result["shapes"]) / len(SHAPES))
    result["geomean_speedup_vs_reference"] = geo
    result["geomean_speedup_vs_lean_reference"] = geo_lean
    print("-" * len(head))
    print(f"geometric mean speed-up: x{geo:.0f} vs reference, x{geo_lean:.0f} vs lean reference")

    if not args.skip_network:
        cmd = [sys.executable, __file__, "--network-only", "--threads", str(args.threads), "--batch",
               str(args.batch), "--samples", str(args.samples), "--seed", str(args.seed)]
        if args.calib_data:
            cmd += ["--calib-data", args.calib_data]
        child = subprocess.run(cmd, capture_output=True, text=True, check=True)
        net = json.loads(child.stdout.strip().splitlines()[-1])
        # The reference's time for the same maps, from its per-sample rate at each map shape (measured here
        # for shapes not in the table above).
        rate = {(r["channels"], r["positions"]): r["reference_ms_per_sample"] / 1e3 for r in result["shapes"]}
        gen = torch.Generator().manual_seed(args.seed)
        for c, hw, _ in net["maps"]:
            if (c, hw) not in rate:
                stored = torch.randn(args.batch, c, hw, generator=gen).clamp_(min=0)
                times = []
                for i in range(max(1, args.ref_samples)):
                    start = time.perf_counter()
                    reference_ci(stored, i)
                    times.append(time.perf_counter() - start)
                rate[(c, hw)] = median(times)
        estimate = sum(rate[(c, hw)] * n for c, hw, n in net["maps"])
        net["reference_estimate_s"] = estimate
        net["speedup_vs_reference_estimate"] = estimate / net["wall_s"]
        net["reference_rate_s_per_sample"] = {f"{c}x{hw}": rate[(c, hw)] for c, hw, _ in net["maps"]}
        result["network"] = net
        print(f"\nResNet-56, {net['samples']} samples of 32x32 in batches of {net['batch']}, "
              f"{torch.get_num_threads()} threads:")
        print(f"  forward only          {net['forward_only_s']:8.1f} s")
        print(f"  calibrate (CI hooks)  {net['calibrate_s']:8.1f} s  ({net['layers_hooked']} layers hooked)")
        print(f"  score {net['groups_scored']} groups       {net['score_groups_s']:8.1f} s")
        print(f"  wall (calib + score)  {net['wall_s']:8.1f} s   peak RSS {net['peak_rss_during_calibration_mib']:.0f}"
              f" MiB during calibration and scoring ({net['rss_before_calibration_mib']:.0f} MiB before it)")
        print(f"  reference, estimated  {estimate:8.0f} s   (x{net['speedup_vs_reference_estimate']:.0f}); it also "
              f"stores {net['feature_bytes_reference_stores'] / 2**20:.0f} MiB of feature maps")
    if args.study:
        result["study"] = {arch: study(args.study_seeds, args.study_epochs, 16, arch) for arch in STUDY_MODELS}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
