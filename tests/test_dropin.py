"""Drop-in: PFGDF and CHIP in place of MagnitudeImportance under Torch-Pruning's own pruners and flows.

The matrix: MetaPruner with iterative_steps=3, global and isomorphic pruning, GroupNormPruner with regularize(),
GrowingRegPruner, round_to, pruning_ratio_dict, and whole-head pruning of a tiny ViT; every group Torch-Pruning
builds gets a finite score (ghostnet_100, a Ghost-like concat net, a net whose last conv feeds the output); and
CHIP's self-calibration: when it recalibrates, that it then equals a fresh calibration, and its data forms.
"""

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from timm.models.vision_transformer import VisionTransformer

from pfgdf_plugin import CHIPImportance, PFGDFImportance, prune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 12


class TinyNet(nn.Module):
    """Stem, a residual block, a concat of two branches (6 + 10 channels), a strided head conv, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.branch_a, self.bn_a = nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6)
        self.branch_b, self.bn_b = nn.Conv2d(8, 10, 3, padding=1), nn.BatchNorm2d(10)
        self.head, self.bn_h = nn.Conv2d(16, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = torch.cat([F.relu(self.bn_a(self.branch_a(x))), F.relu(self.bn_b(self.branch_b(x)))], 1)
        return self.fc(F.relu(self.bn_h(self.head(x))).mean((2, 3)))


ROOTS = ("stem", "conv1", "branch_a", "branch_b", "head")  # one conv per prunable group


def _net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def _batches(n: int = 2, bs: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, SIZE, SIZE, generator=g) for _ in range(n)]


def _example() -> torch.Tensor:
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _importance(name: str) -> tp.importance.Importance:
    return PFGDFImportance() if name == "pfgdf" else CHIPImportance(calibration=_batches())


def _channels(model: TinyNet) -> dict[str, int]:
    return {n: getattr(model, n).out_channels for n in ROOTS}


def _fresh_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """CHIP's sums from a one-shot calibration of ``model`` on the same batches: what a recalibration must equal."""
    imp = CHIPImportance()
    with imp.calibrate(model):
        for x in _batches():
            model(x)
    return {k: st.ci_sum for k, st in imp.stats.items()}


def _assert_calibrated_on(imp: CHIPImportance, snapshot: nn.Module) -> None:
    expected = _fresh_stats(snapshot)
    assert set(imp.stats) == set(expected)
    for k, ci_sum in expected.items():
        assert torch.allclose(imp.stats[k].ci_sum, ci_sum, rtol=1e-10, atol=0), k


CRITERIA = ["pfgdf", "chip"]


@pytest.mark.parametrize("name", CRITERIA)
def test_iterative_steps_follow_the_schedule_and_prune_the_lowest_scores(name):
    model = _net()
    with torch.no_grad():  # distinct BN scales mark conv1's channels through pruning
        model.bn1.weight.copy_(torch.linspace(0.5, 1.5, 8))
    imp = _importance(name)
    reference = copy.deepcopy(model)  # the first step's scores, from a separate graph on an identical copy
    graph = tp.DependencyGraph().build_dependency(reference, _example())
    group = graph.get_pruning_group(reference.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    first = (_importance(name) if name == "pfgdf" else imp)(group)
    pruner = tp.pruner.MetaPruner(model, _example(), importance=imp, pruning_ratio=0.5, iterative_steps=3,
                                  ignored_layers=[model.fc])
    initial, snapshot = _channels(model), None
    for step in (1, 2, 3):
        snapshot = copy.deepcopy(model)
        pruner.step()
        # Torch-Pruning's linear schedule: after step k, int(n * (1 - 0.5 * k / 3)) channels of n remain
        assert _channels(model) == {n: int(c * (1 - 0.5 * step / 3)) for n, c in initial.items()}
        if step == 1:
            kept = {int(torch.argmin((reference.bn1.weight - w).abs())) for w in model.bn1.weight.detach()}
            assert set(range(8)) - kept == set(torch.argsort(first, stable=True)[:2].tolist())
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)
    if name == "chip":
        assert imp.calibrations == 3  # the original, then the model after each of the first two steps
        _assert_calibrated_on(imp, snapshot)


@pytest.mark.parametrize("isomorphic", [False, True])
@pytest.mark.parametrize("name", CRITERIA)
def test_global_and_isomorphic_pruning(name, isomorphic):
    model = _net()
    imp = _importance(name)
    pruner = tp.pruner.MetaPruner(model, _example(), importance=imp, pruning_ratio=0.5, global_pruning=True,
                                  isomorphic=isomorphic, ignored_layers=[model.fc])
    before = _channels(model)
    pruner.step()
    after = _channels(model)
    assert sum(after.values()) == sum(before.values()) // 2
    assert all(0 < after[n] <= before[n] for n in ROOTS)
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("name", CRITERIA)
def test_group_norm_pruner_regularize_then_prune(name):
    model = _net()
    imp = _importance(name)
    pruner = tp.pruner.GroupNormPruner(model, _example(), importance=imp, pruning_ratio=0.5, reg=1e-2,
                                       ignored_layers=[model.fc])
    # The same pruner with a one-shot importance calibrated by hand right before each regularize(): the
    # self-calibrating one must give exactly its gradients.
    manual = CHIPImportance() if name == "chip" else PFGDFImportance()
    check = tp.pruner.GroupNormPruner(model, _example(), importance=manual, pruning_ratio=0.5, reg=1e-2,
                                      ignored_layers=[model.fc])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 5, (8,))
    for _ in range(2):
        _train_step(model, opt, x, y)
        plain = {n: p.grad.clone() for n, p in model.named_parameters()}
        pruner.regularize(model)
        auto = {n: p.grad.clone() for n, p in model.named_parameters()}
        assert not torch.equal(auto["conv1.weight"], plain["conv1.weight"]), "regularize() changed nothing"
        for n, p in model.named_parameters():
            p.grad.copy_(plain[n])
        if name == "chip":
            with manual.calibrate(model):
                for b in _batches():
                    model(b)
        check.regularize(model)
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, auto[n]), n
        opt.step()
    pruner.step()
    assert _channels(model) == {"stem": 4, "conv1": 4, "branch_a": 3, "branch_b": 5, "head": 6}
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)
    if name == "chip":
        assert imp.calibrations == 3  # each regularize() after a training step, then step() after the last one


@pytest.mark.parametrize("name", CRITERIA)
def test_growing_reg_pruner(name):
    model = _net()
    imp = _importance(name)
    pruner = tp.pruner.GrowingRegPruner(model, _example(), importance=imp, pruning_ratio=0.5, reg=1e-3,
                                        delta_reg=1e-3, ignored_layers=[model.fc])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 5, (8,))
    for _ in range(2):
        _train_step(model, opt, x, y)
        pruner.regularize(model)
        opt.step()
        pruner.update_reg()
    assert any(float(r.max()) > 1e-3 for r in pruner.group_reg.values()), "the regularisation never grew"
    pruner.step()
    assert _channels(model) == {"stem": 4, "conv1": 4, "branch_a": 3, "branch_b": 5, "head": 6}
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)
    if name == "chip":
        # regularize (first use), update_reg (after a step), regularize (BN statistics moved in the forward),
        # update_reg (after a step); step() finds the model unchanged since
        assert imp.calibrations == 4


@pytest.mark.parametrize("name", CRITERIA)
def test_round_to_and_pruning_ratio_dict(name):
    model = _net()
    pruner = tp.pruner.MetaPruner(model, _example(), importance=_importance(name), pruning_ratio=0.5, round_to=4,
                                  ignored_layers=[model.fc])
    before = _channels(model)
    pruner.step()
    # Torch-Pruning rounds the channels left down to a multiple of 4, and leaves a group alone if that is none
    rounded = {n: c // 2 - c // 2 % 4 for n, c in before.items()}
    assert _channels(model) == {n: rounded[n] or before[n] for n in ROOTS} == {
        "stem": 4, "conv1": 4, "branch_a": 6, "branch_b": 4, "head": 4}
    model = _net()
    pruner = tp.pruner.MetaPruner(model, _example(), importance=_importance(name), pruning_ratio=0.5,
                                  pruning_ratio_dict={model.branch_b: 0.8}, ignored_layers=[model.fc])
    pruner.step()
    # int(10 * (1 - 0.8)) is 1 in floating point: one channel of branch_b is left
    assert _channels(model) == {"stem": 4, "conv1": 4, "branch_a": 3, "branch_b": 1, "head": 6}
    assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)


class _Recorder:
    """Passes every call through to the importance and keeps the scores (to check which heads went)."""

    def __init__(self, imp: object) -> None:
        self.imp, self.calls = imp, []

    def __call__(self, group: object) -> torch.Tensor | None:
        scores = self.imp(group)
        self.calls.append((group[0].dep.target.module, scores))
        return scores


@pytest.mark.parametrize("name", CRITERIA)
def test_vit_head_pruning_keeps_the_best_scored_heads(name):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2,
                              num_classes=5)
    imp = PFGDFImportance() if name == "pfgdf" else CHIPImportance(calibration=torch.randn(4, 3, 16, 16))
    recorder = _Recorder(imp)
    with torch.no_grad():  # each head's value bias marks it through pruning
        for blk in model.blocks:
            blk.attn.qkv.bias[64:] = torch.arange(4.0).repeat_interleave(8) + 10
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 16, 16), importance=recorder, pruning_ratio=0.5,
                                  num_heads={b.attn.qkv: b.attn.num_heads for b in model.blocks},
                                  prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5,
                                  ignored_layers=[model.head])
    pruner.step()
    for blk in model.blocks:  # what Torch-Pruning's ViT example does after pruning heads
        blk.attn.num_heads = blk.attn.qkv.out_features // (3 * blk.attn.head_dim)
        blk.attn.attn_dim = blk.attn.num_heads * blk.attn.head_dim
    assert [b.attn.num_heads for b in model.blocks] == [2, 2]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    for blk in model.blocks:
        scores = next(s for m, s in recorder.calls if m is blk.attn.proj)  # the attention group's scores
        assert bool(torch.isfinite(scores).all())
        best = set(torch.argsort(scores.view(4, -1).mean(1), descending=True)[:2].tolist())
        kept = {int(b) - 10 for b in blk.attn.qkv.bias[32:].detach().unique()}
        assert kept == best


# ---------------------------------------------------------------------------------------------------------
# Every group Torch-Pruning builds gets a finite score for every channel.


class GhostLike(nn.Module):
    """A Ghost module (a 1x1 conv and a depthwise conv of its output, concatenated) under squeeze-excitation.

    Torch-Pruning maps both halves of the concat onto the second half of the SE group's channels, and the only
    member covering the first half is the SE's pooled excitation conv, as in timm's ghostnet_100.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.primary, self.bn_p = nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6)
        self.cheap, self.bn_c = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6)
        self.se_reduce, self.se_expand = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.out = nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        a = F.relu(self.bn_p(self.primary(x)))
        y = torch.cat([a, F.relu(self.bn_c(self.cheap(a)))], 1)
        y = y * torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return self.fc(F.relu(self.out(y)).mean((2, 3)))


class LastConvOut(nn.Module):
    """Torch-Pruning's TransposeModel: the last conv's channels go, after BN and ReLU, to the model output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.ConvTranspose2d(16, 12, 2, stride=2), nn.BatchNorm2d(12)
        self.conv3, self.bn3 = nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.relu(self.bn3(self.conv3(x)))


def _all_scores(model: nn.Module, size: int, feature: str) -> dict[str, torch.Tensor | None]:
    model.eval()
    imp = CHIPImportance(feature=feature, calibration=torch.randn(2, 3, size, size))
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, size, size))
    names = {m: n for n, m in model.named_modules()}
    return {names[g[0].dep.target.module]: imp(g) for g in graph.get_all_groups()}


@pytest.mark.parametrize("feature", ["input", "output"])
def test_every_ghostnet_group_gets_finite_scores(feature):
    scores = _all_scores(timm.create_model("ghostnet_100", num_classes=10), 32, feature)
    assert len(scores) >= 30 and "blocks.4.0.se.conv_expand" in scores
    bad = {n: s for n, s in scores.items() if s is None or not bool(torch.isfinite(s).all())}
    assert not bad, sorted(bad)


def test_partial_concat_mapping_takes_the_rest_from_the_pooled_member():
    model = GhostLike()
    scores = _all_scores(model, 8, "output")
    assert all(s is not None and bool(torch.isfinite(s).all()) for s in scores.values())
    imp = CHIPImportance(feature="output", calibration=torch.randn(2, 3, 8, 8))
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    se = graph.get_pruning_group(model.se_expand, tp.prune_conv_out_channels, idxs=list(range(12)))
    got = imp(se)
    # spatial members (primary, cheap) are mapped onto channels 6-11; the pooled se_expand scores 0-5 alone
    assert torch.allclose(got[:6], imp.layer_scores("se_expand")[:6], rtol=1e-12)
    spatial = (imp.layer_scores("primary") + imp.layer_scores("cheap")) / 2
    assert torch.allclose(got[6:], spatial, rtol=1e-12)


def test_a_group_read_only_by_the_model_output_is_scored_on_the_output_map():
    model = LastConvOut().eval()
    scores = _all_scores(model, 8, "input")
    assert set(scores) == {"conv1", "conv2", "conv3"} and all(bool(torch.isfinite(s).all()) for s in scores.values())
    imp = CHIPImportance(calibration=torch.randn(2, 3, 8, 8))
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    last = graph.get_pruning_group(model.conv3, tp.prune_conv_out_channels, idxs=list(range(8)))
    scores = imp(last)
    assert [m.key for m in imp.members(last)] == ["<output 0>"]  # the post-ReLU output: the paper's map
    assert torch.equal(scores, imp.layer_scores("<output 0>"))


def test_attention_queries_and_keys_get_the_neutral_mean_of_their_group():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=4, num_classes=5)
    imp = CHIPImportance(calibration=torch.randn(3, 3, 16, 16))
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 16, 16))
    qkv = model.blocks[0].attn.qkv
    scores = imp(graph.get_pruning_group(qkv, tp.prune_linear_out_channels, idxs=list(range(96))))
    values = imp.layer_scores("blocks.0.attn.proj")  # v's channels: what the projection reads
    assert torch.allclose(scores[64:], values, rtol=1e-12)
    assert torch.allclose(scores[:64], values.mean().expand(64), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Self-calibration: when it recalibrates, and the data it takes.


def test_recalibrates_exactly_when_the_model_changed():
    model = _net().eval()
    imp = CHIPImportance(calibration=_batches())
    graph = tp.DependencyGraph().build_dependency(model, _example())
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    first = imp(group)
    assert imp.calibrations == 1
    assert torch.equal(imp(group), first) and imp.calibrations == 1, "unchanged: no recalibration"
    copied = copy.deepcopy(model)  # other tensors, same values: the digest settles it, no recalibration
    copy_graph = tp.DependencyGraph().build_dependency(copied, _example())
    same = imp(copy_graph.get_pruning_group(copied.conv1, tp.prune_conv_out_channels, idxs=list(range(8))))
    assert torch.equal(same, first) and imp.calibrations == 1
    with torch.no_grad():
        model.conv1.weight.mul_(-1.0)  # an in-place write
    changed = imp(group)
    assert imp.calibrations == 2 and not torch.equal(changed, first)
    _assert_calibrated_on(imp, model)
    model.conv1.weight.data.mul_(-1.0)  # invisible to PyTorch's write counters: forget() is the way
    imp.forget()
    assert torch.allclose(imp(group), first, rtol=1e-12) and imp.calibrations == 3


def test_one_shot_calibration_still_refuses_a_changed_model():
    model = _net().eval()
    imp = CHIPImportance()
    with imp.calibrate(model):
        model(_batches()[0])
    pruner = tp.pruner.MetaPruner(model, _example(), importance=imp, pruning_ratio=0.5, iterative_steps=2,
                                  ignored_layers=[model.fc])
    pruner.step()
    shapes = _channels(model)
    with pytest.raises(ValueError, match="model changed since calibration.*pass calibration="):
        pruner.step()
    assert _channels(model) == shapes


def _generator():
    yield from _batches()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: _batches(), id="list"),
        pytest.param(lambda: [(x, torch.zeros(len(x))) for x in _batches()], id="pairs"),
        pytest.param(lambda: torch.utils.data.DataLoader(torch.cat(_batches()), batch_size=4), id="dataloader"),
        pytest.param(_generator, id="generator"),
        pytest.param(lambda: torch.cat(_batches()), id="one tensor"),
    ],
)
def test_calibration_data_forms_equal_a_one_shot_calibration(data):
    model = _net().eval()
    imp = CHIPImportance(calibration=data())
    graph = tp.DependencyGraph().build_dependency(model, _example())
    imp(graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8))))
    assert imp.stats["conv2"].samples == 8
    # one tensor is one batch of 8: the same maps, summed in another order
    _assert_calibrated_on(imp, model)
    imp.forget()  # a generator is read once and its batches kept: a second calibration sees them again
    imp(graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8))))
    assert imp.stats["conv2"].samples == 8 and imp.calibrations == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"calibration": "digits"}, "calibration must be a DataLoader"),
        ({"calibration": torch.zeros(0, 3, 8, 8)}, "at least one sample"),
        ({"calibration": _batches(), "calibration_batches": 0}, "calibration_batches must be an integer >= 1"),
    ],
)
def test_bad_calibration_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CHIPImportance(**kwargs)


def test_empty_or_unusable_calibration_data_raise_clearly_and_leave_the_model_alone():
    model = _net().eval()
    graph = tp.DependencyGraph().build_dependency(model, _example())
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(8)))
    with pytest.raises(ValueError, match="yielded no batch"):
        CHIPImportance(calibration=[])(group)
    with pytest.raises(ValueError, match="calibration batch 2 must be a tensor or an"):
        CHIPImportance(calibration=[_batches()[0], "x"])(group)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_prune_with_a_self_calibrating_chip():
    model = _net()
    imp = CHIPImportance(calibration=_batches())
    result = prune(model, _example(), importance=imp, alpha=0.8, classifier=model.fc)
    assert result.macs_kept < 1.0 and imp.calibrations == 1
    assert result.model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 5)
    prune(model, _example(), importance=imp, alpha=0.8, classifier=model.fc)
    assert imp.calibrations == 1, "the second prune() copy holds the calibrated values: no recalibration"
