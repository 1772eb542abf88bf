"""CHIP: the exact fast CI against a float64 SVD of the definition, streaming calibration, group scoring, errors."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin import CHIPImportance, prune
from pfgdf_plugin.criteria.chip import LayerStats, channel_independence
from pfgdf_plugin.models.zoo import CifarResNet
from tests.conftest import state_hash
from tests.reference import capture_maps, mean_oracle_ci, oracle_ci, spearman

# The oracle (tests/reference.py): the definition, one float64 SVD (numpy) per channel per sample.

def rel_err(fast: torch.Tensor, ref: np.ndarray) -> float:
    fast = fast.double().numpy()
    return float(np.max(np.abs(fast - ref) / np.maximum(np.abs(ref), 1e-300)))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(16, 1024), (32, 256), (64, 64), (256, 196), (512, 49)])
def test_fast_ci_equals_float64_svd_oracle(shape):
    maps = torch.rand(1, *shape, generator=_gen(shape[0]))  # random non-negative maps
    ci, bound = channel_independence(maps, return_error_bound=True)
    assert ci.shape == (1, shape[0]) and ci.dtype == torch.float64
    channels = list(range(shape[0]))
    if shape[0] > 64:  # the oracle's SVDs of the wide layers take ~0.1 s each: a fixed sample plus both extremes
        picked = np.random.default_rng(0).choice(shape[0], 12, replace=False).tolist()
        channels = sorted(set(picked) | {int(ci[0].argmin()), int(ci[0].argmax())})
    ref = oracle_ci(maps[0].numpy(), channels)
    assert rel_err(ci[0, channels], ref) <= 1e-6
    # the quadrature's own a-posteriori bound is tiny and positive
    assert bool((bound > 0).all()) and float((bound / ci).max()) < 1e-8


def _rank_deficient_cases() -> dict[str, torch.Tensor]:
    g = _gen(7)
    tall = torch.rand(96, 20, generator=g)  # C > HW
    dup = torch.rand(40, 100, generator=g)
    dup[5] = dup[3]
    dup[17] = 2.5 * dup[11]  # a scaled copy
    dup[30] = 0.0  # an all-zero channel
    low = (torch.rand(48, 6, generator=g, dtype=torch.float64) @ torch.rand(6, 80, generator=g, dtype=torch.float64))
    tall_dup = torch.rand(60, 12, generator=g)
    tall_dup[4] = tall_dup[9]
    tall_dup[0] = 0.0
    tall_dup[:, 3] = 0.0  # and a dead position
    return {"tall": tall, "duplicates+zero": dup, "rank 6": low, "tall+duplicates+zero": tall_dup}


@pytest.mark.parametrize("case", list(_rank_deficient_cases()))
def test_rank_deficient_maps_match_the_oracle(case):
    a = _rank_deficient_cases()[case]
    ci = channel_independence(a)
    ref = oracle_ci(a.numpy())
    zero = np.flatnonzero(ref == 0)
    assert np.array_equal(np.flatnonzero(ci.numpy() == 0), zero), "exactly the all-zero rows score 0"
    live = ref != 0
    assert rel_err(ci[live], ref[live]) <= 1e-6


def test_copies_share_their_independence_and_a_lone_row_keeps_its_norm():
    # rows 0 and 2 are copies, row 1 is orthogonal to both: CI = sqrt(2) - 1, 2, sqrt(2) - 1 exactly
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    ci = channel_independence(a)
    assert torch.allclose(ci, torch.tensor([2**0.5 - 1, 2.0, 2**0.5 - 1], dtype=torch.float64), rtol=1e-12)


def test_weak_channels_are_exact_where_the_float64_oracle_cancels():
    """Channels 1e-9 weaker than the rest: the SVD difference loses ~6 digits, the fast method does not."""
    mp = pytest.importorskip("mpmath")
    a = torch.rand(10, 10, generator=_gen(3), dtype=torch.float64) * torch.logspace(0, -9, 10).unsqueeze(1)
    ci = channel_independence(a)
    mp.mp.dps = 40
    m = mp.matrix(a.tolist())
    full = sum(mp.svd_r(m, compute_uv=False))
    for c in (0, 5, 9):
        zeroed = m.copy()
        for j in range(m.cols):
            zeroed[c, j] = 0
        exact = float(full - sum(mp.svd_r(zeroed, compute_uv=False)))
        assert abs(float(ci[c]) - exact) <= 1e-9 * exact


def test_batched_and_chunked_equal_per_sample():
    maps = torch.rand(5, 12, 30, generator=_gen(1))
    whole = channel_independence(maps)
    one_by_one = torch.stack([channel_independence(m) for m in maps])
    tiny_chunks = channel_independence(maps, chunk_bytes=1)  # one sample per chunk
    assert whole.shape == (5, 12)
    assert torch.equal(tiny_chunks, one_by_one)
    # in a batch every sample shares the longest grid: extra nodes change the sum below the error bound
    assert torch.allclose(whole, one_by_one, rtol=1e-9, atol=0)
    assert torch.equal(whole, channel_independence(maps)), "deterministic"


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 4, 5, 6), "float tensor"),
        (torch.ones(4, 5, dtype=torch.long), "float tensor"),
        (torch.rand(0, 4, 5), "empty"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN or Inf"),
    ],
)
def test_bad_maps_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        channel_independence(bad)


# ---------------------------------------------------------------------------------------------------------
# Calibration: which tensor is hooked, streaming, errors.


class Chain(nn.Module):
    """conv -> bn -> relu -> conv -> bn -> relu -> pool -> linear, with named layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(12, 10, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(10)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(10, 4)
        with torch.no_grad():  # non-trivial BN statistics and affine parameters
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _batches(n: int, size: int = 8, seed: int = 0, bs: int = 3) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(bs, 3, size, size, generator=g) for _ in range(n)]


def _calibrated(model: nn.Module, batches: list[torch.Tensor], **kwargs) -> CHIPImportance:
    imp = CHIPImportance(**kwargs)
    with imp.calibrate(model):
        for x in batches:
            model(x)
    return imp


@pytest.mark.parametrize(
    "feature, layer, tensor_of",
    [("input", "conv2", "act1"), ("norm", "bn1", "bn1"), ("output", "conv1", "conv1")],
)
def test_hooked_tensor_mean_ci_matches_the_oracle(feature, layer, tensor_of):
    model = Chain().train()
    batches = _batches(2)
    imp = _calibrated(model, batches, feature=feature, normalization="rms")
    maps = capture_maps(model, getattr(model, tensor_of), batches)
    expected = np.mean([oracle_ci(m) for m in maps], axis=0)
    st = imp.stats[layer]
    assert (st.samples, st.channels, st.positions) == (6, 12, 64)
    assert rel_err(imp.layer_ci(layer), expected) <= 1e-6
    energy = np.mean([(m**2).sum(1) for m in maps], axis=0)
    assert np.allclose(imp.layer_scores(layer).numpy(), expected / np.sqrt(energy.mean()), rtol=1e-9)


def test_streaming_three_batches_equals_one_pass_over_their_concatenation():
    model = Chain()
    batches = _batches(3, bs=4)
    streamed = _calibrated(model, batches)
    whole = _calibrated(model, [torch.cat(batches)])
    assert streamed.batches == 3 and whole.batches == 1
    for name, st in streamed.stats.items():
        other = whole.stats[name]
        assert st.samples == other.samples == 12
        assert torch.allclose(st.ci_sum, other.ci_sum, rtol=1e-10, atol=1e-12)
        assert torch.allclose(st.energy_sum, other.energy_sum, rtol=1e-10, atol=1e-12)
    again = _calibrated(model, batches)
    assert all(torch.equal(again.layer_scores(n), streamed.layer_scores(n)) for n in streamed.stats), "determinism"


def test_calibration_leaves_the_model_as_it_was():
    model = Chain().train()
    before = state_hash(model)
    imp = _calibrated(model, _batches(2))
    assert state_hash(model) == before, "eval mode inside: no BN statistics updated, modes restored"
    assert model.training and torch.is_grad_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert imp.stats["conv2"].samples == 6


def _group_of(graph: tp.DependencyGraph, conv: nn.Conv2d) -> tp.dependency.Group:
    return graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))


def test_output_feature_averages_every_producer_of_a_residual_stream():
    model = timm.create_model("resnet18", num_classes=10)
    imp = _calibrated(model, _batches(2, size=48, bs=2), feature="output")
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 48, 48))
    stem = _group_of(graph, model.conv1)
    producers = ["conv1", "layer1.1.conv2", "layer1.0.conv2"]
    assert [m.key for m in imp.members(stem)] == producers
    scores = torch.stack([imp.layer_ci(k) / imp.layer_ci(k).mean() for k in producers])
    assert torch.allclose(imp(stem), scores.mean(0), rtol=1e-12)
    plain = _group_of(graph, model.layer1[0].conv1)
    assert torch.equal(imp(plain), imp.layer_scores("layer1.0.conv1"))


def test_input_feature_reads_each_distinct_consumer_map_before_pooling():
    model = timm.create_model("resnet18", num_classes=10)
    imp = _calibrated(model, _batches(2, size=64, bs=2))  # the default: feature="input"
    # the downsample conv reads the very tensor its block's conv1 reads: counted once; readers of a pooled map
    # (layer1 after the stem's max-pool, fc after global pooling) are scored on the map before pooling
    assert imp._cal.aliases == {**{f"layer{i}.0.downsample.0": f"layer{i}.0.conv1" for i in (2, 3, 4)},
                                "layer1.0.conv1": "maxpool", "fc": "global_pool.pool"}
    assert (imp.stats["maxpool"].channels, imp.stats["maxpool"].positions) == (64, 32 * 32)
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 64, 64))
    stem = _group_of(graph, model.conv1)  # the layer1 residual stream
    keys = ["maxpool", "layer1.1.conv1", "layer2.0.conv1"]
    assert [m.key for m in imp.members(stem)] == keys
    expected = torch.stack([imp.layer_scores(k) for k in keys])
    assert torch.allclose(imp(stem), expected.mean(0), rtol=1e-12)
    last = _group_of(graph, model.layer4[1].conv2)  # read by layer4.1.conv1 and, through the pooling, by fc
    assert sorted(m.key for m in imp.members(last)) == ["global_pool.pool", "layer4.1.conv1"]
    both = torch.stack([imp.layer_scores("layer4.1.conv1"), imp.layer_scores("global_pool.pool")])
    assert torch.allclose(imp(last), both.mean(0), rtol=1e-12)
    plain = _group_of(graph, model.layer1[0].conv1)
    assert torch.equal(imp(plain), imp.layer_scores("layer1.0.conv2"))


def _cifar_resnet() -> CifarResNet:
    """CifarResNet-20 (the CHIP paper's CIFAR family), random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = CifarResNet(depth=20)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _post_activation(model: nn.Module, bn: nn.Module, batches: list[torch.Tensor]) -> list[np.ndarray]:
    """ReLU(BN output), the ReLU applied here in numpy: the paper's post-activation map, found independently."""
    return [np.maximum(m, 0.0) for m in capture_maps(model, bn, batches)]


def test_default_ranks_plain_blocks_by_the_definition_on_the_post_activation_map():
    model = _cifar_resnet()
    batches = _batches(2, size=32, bs=3)
    imp = _calibrated(model, batches)  # the default
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    for block in model.layers:  # conv1 of every block: conv -> BN -> ReLU -> conv2, no residual coupling
        expected = mean_oracle_ci(_post_activation(model, block.bn1, batches))
        got = imp(_group_of(graph, block.conv1)).numpy()
        assert spearman(got, expected) >= 0.999
        assert np.allclose(got, expected / expected.mean(), rtol=1e-6, atol=1e-12)


def test_default_scores_a_residual_stream_by_the_post_add_maps_its_blocks_read():
    model = _cifar_resnet()
    batches = _batches(2, size=32, bs=3)
    imp = _calibrated(model, batches)
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    stream = _group_of(graph, model.conv1)  # stage 1: the stem and the conv2 of its three blocks
    # what stage 1's readers read: the stem's ReLU output, then each block's output (after add and ReLU)
    maps = [_post_activation(model, model.bn1, batches)] + [capture_maps(model, model.layers[i], batches)
                                                           for i in range(3)]
    per_map = [ci / ci.mean() for ci in map(mean_oracle_ci, maps)]
    assert np.allclose(imp(stream).numpy(), np.mean(per_map, axis=0), rtol=1e-6, atol=1e-12)


def test_normalizations():
    model = Chain()
    imp = _calibrated(model, _batches(1), normalization="none")
    assert torch.equal(imp.layer_scores("conv2"), imp.layer_ci("conv2"))
    mean = _calibrated(model, _batches(1))
    assert torch.allclose(mean.layer_scores("conv2"), imp.layer_ci("conv2") / imp.layer_ci("conv2").mean())
    assert float(mean.layer_scores("conv2").mean()) == pytest.approx(1.0, rel=1e-12)
    st = imp.stats["conv2"]
    assert isinstance(st, LayerStats) and torch.equal(st.mean_ci(), st.ci_sum / st.samples)


def test_end_to_end_resnet18_prunes_the_lowest_ci_channels_of_a_plain_conv_by_the_oracle():
    model = timm.create_model("resnet18", num_classes=10)
    with torch.no_grad():  # distinct BN scales mark layer1.0.conv1's channels through pruning
        model.layer1[0].bn1.weight.copy_(torch.linspace(0.5, 1.5, 64))
    batches = _batches(2, size=48, bs=2)
    imp = _calibrated(model, batches)
    result = prune(model, torch.randn(1, 3, 48, 48), importance=imp, target_macs=0.5)
    assert abs(result.macs_kept - 0.5) <= 0.01
    assert result.model(torch.randn(2, 3, 48, 48)).shape == (2, 10)
    assert result.criterion.startswith("CHIPImportance(feature='input'")
    marks = {round(float(v), 6): i for i, v in enumerate(model.layer1[0].bn1.weight.detach())}
    kept = {marks[round(float(v), 6)] for v in result.model.layer1[0].bn1.weight.detach()}
    assert 0 < len(kept) < 64
    # the default: the post-activation map of layer1.0.conv1's channels (what layer1.0.conv2 reads)
    mean_ci = mean_oracle_ci(capture_maps(model, model.layer1[0].act1, batches))
    lowest = set(np.argsort(mean_ci)[: 64 - len(kept)].tolist())
    assert set(range(64)) - kept == lowest


def test_end_to_end_mobilenetv3_runs():
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    imp = _calibrated(model, _batches(2, size=48, bs=2))
    result = prune(model, torch.randn(1, 3, 48, 48), importance=imp, target_macs=0.5)
    assert abs(result.macs_kept - 0.5) <= 0.01
    assert result.model(torch.randn(2, 3, 48, 48)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing changed.


def test_no_batches_is_an_error_and_nothing_changes():
    model = Chain().train()
    before = state_hash(model)
    imp = CHIPImportance()
    with pytest.raises(ValueError, match="no batch ran"), imp.calibrate(model):
        pass
    assert state_hash(model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no calibration data"):
        prune(model, torch.randn(1, 3, 8, 8), importance=imp, alpha=0.5)
    assert state_hash(model) == before


_NAN = torch.full((2, 3, 8, 8), float("nan"))


@pytest.mark.parametrize("feature", ["output", "input"])
@pytest.mark.parametrize(
    "first, second, match",
    [
        ((3, 8, 8), torch.randn(2, 3, 16, 16), r"per-sample shape \(3, 16, 16\), but the first batch had \(3, 8, 8\)"),
        ((1, 8, 8), None, r"layer 'conv1' expects 3 channels at its input, got a tensor of shape \(2, 1, 8, 8\)"),
        ((3, 8, 8), _NAN, "NaN or Inf in the (input|output) of layer 'conv1' in calibration batch 2"),
    ],
)
def test_bad_batches_raise_clearly_and_leave_model_and_importance_clean(first, second, match, feature):
    model = Chain().train()
    before = state_hash(model)
    imp = CHIPImportance(feature=feature)
    with pytest.raises(ValueError, match=match), imp.calibrate(model):
        model(torch.randn(2, *first))
        model(second)
    assert state_hash(model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert imp.stats == {}, "a failed calibration leaves no partial scores"


@pytest.mark.parametrize("feature, where", [("output", "output"), ("input", "input")])
def test_nan_activations_name_the_layer_they_reach(feature, where):
    model = Chain()
    with torch.no_grad():
        model.bn1.running_var[3] = float("nan")
    imp = CHIPImportance(feature=feature)
    with pytest.raises(ValueError, match=f"NaN or Inf in the {where} of layer 'conv2'"), imp.calibrate(model):
        model(torch.randn(2, 3, 8, 8))


def test_model_changed_between_calibrate_and_prune_is_an_error():
    model = Chain()
    imp = _calibrated(model, _batches(1))
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] += 1.0
    before = state_hash(model)
    with pytest.raises(ValueError, match="model changed since calibration"):
        prune(model, torch.randn(1, 3, 8, 8), importance=imp, alpha=0.5)
    assert state_hash(model) == before
    pruned = prune(Chain(), torch.randn(1, 3, 8, 8), alpha=0.8).model  # another architecture entirely
    with pytest.raises(ValueError, match="model changed since calibration"):
        prune(pruned, torch.randn(1, 3, 8, 8), importance=imp, alpha=0.5)


class Branchy(nn.Module):
    """A branch that runs only when ``use_b`` is set: calibration without it never reaches ``conv_b``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)
        self.use_b = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv_a(x))
        if self.use_b:
            x = torch.relu(self.conv_b(x))
        return self.head(x)


def test_groups_the_calibration_never_reached_are_an_error_naming_the_layers():
    model = Branchy()
    imp = _calibrated(model, _batches(1))
    assert imp.stats["conv_b"].samples == 0
    model.use_b = True  # same weights: only the path differs
    before = state_hash(model)
    with pytest.raises(ValueError, match=r"no calibration data for layer\(s\) 'conv_b'"):
        prune(model, torch.randn(1, 3, 8, 8), importance=imp, alpha=0.5, classifier=None)
    assert state_hash(model) == before


def test_scoring_inside_the_block_and_nested_blocks_are_refused():
    model = Chain()
    imp = CHIPImportance()
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    with imp.calibrate(model):
        model(torch.randn(2, 3, 8, 8))
        with pytest.raises(RuntimeError, match="after the calibrate"):
            imp(_group_of(graph, model.conv1))
        with pytest.raises(RuntimeError, match="cannot nest"), imp.calibrate(model):
            pass


def test_feature_norm_needs_a_norm_layer():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    imp = CHIPImportance(feature="norm")
    with pytest.raises(ValueError, match="no norm layer to hook"), imp.calibrate(model):
        pass


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"feature": "activation"}, "feature must be one of"),
        ({"normalization": "z"}, "normalization must be one of"),
        ({"group_reduction": "median"}, "group_reduction must be one of"),
        ({"chunk_bytes": 0}, "chunk_bytes must be an integer"),
    ],
)
def test_unknown_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CHIPImportance(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Distributed: calibration sums are all-reduced across ranks.

_DIST_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch, torch.distributed as dist, torch.nn as nn
    from pfgdf_plugin import CHIPImportance

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(),
                             nn.Conv2d(5, 4, 1))

    def make_batches():
        g = torch.Generator().manual_seed(1)
        return [torch.randn(3, 3, 10, 10, generator=g) for _ in range(4)]

    def run(rank, world, out, port):  # forked from a fresh interpreter that has run no torch op yet
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model, imp = make_model(), CHIPImportance()
        with imp.calibrate(model):
            for x in make_batches()[rank::world]:  # each rank sees half of the batches
                model(x)
        torch.save({n: (s.samples, s.ci_sum, s.energy_sum) for n, s in imp.stats.items()}, f"{out}/{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.multiprocessing.start_processes(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2,
                                              start_method="fork")
    """
)


def test_distributed_calibration_sums_equal_a_single_process_over_all_batches(tmp_path):
    import importlib.util
    import socket

    script = tmp_path / "dist_chip.py"
    script.write_text(_DIST_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), port], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = importlib.util.spec_from_file_location("dist_chip", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    single = _calibrated(module.make_model(), module.make_batches())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        for name, st in single.stats.items():
            samples, ci_sum, energy_sum = got[name]
            assert samples == st.samples
            # The maps are float32 convolutions whose last bits depend on each process's thread count, so
            # the sums agree to float32 precision; a missing all-reduce would be off by a factor of ~2.
            assert torch.allclose(ci_sum, st.ci_sum, rtol=1e-5, atol=1e-8)
            assert torch.allclose(energy_sum, st.energy_sum, rtol=1e-5, atol=1e-8)
    assert single.stats["3"].samples == 12
