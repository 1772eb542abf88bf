"""Layer kinds Torch-Pruning's defaults got wrong, now pruned: convs with a per-channel ``gain`` (NF-Nets),
token-mixing linears (gMLP, MLP-Mixer), and groups mapped to channels a layer does not have."""

from __future__ import annotations

import copy

import timm
import torch
import torch.nn as nn
from timm.layers import ScaledStdConv2d

from pfgdf_plugin import prune
from pfgdf_plugin.deploy.onnx import export_onnx
from pfgdf_plugin.models.token_mixing import find_token_mixing
from pfgdf_plugin.pruning.pruners import ExtraParamConvPruner, customized_pruners, extra_channel_parameters
from tests.conftest import state_hash


class GainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = ScaledStdConv2d(3, 16, 3)
        self.b = ScaledStdConv2d(16, 16, 3)
        self.c = ScaledStdConv2d(16, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.head(x.mean((2, 3)))


def test_a_gain_is_sliced_with_the_filters_it_scales(tmp_path):
    torch.manual_seed(0)
    net = GainNet().eval()
    with torch.no_grad():
        for conv in (net.a, net.b, net.c):
            conv.gain.copy_(torch.rand_like(conv.gain) + 0.5)  # distinct gains, so a wrong slice shows
    before = {n: copy.deepcopy(m) for n, m in net.named_children()}
    x = torch.randn(1, 3, 24, 24)
    untouched = state_hash(net)
    result = prune(net, x, target_macs=0.5)
    assert state_hash(net) == untouched
    assert set(result.ignored) == {"head"}, result.ignored
    pruned = result.model
    assert sum(getattr(pruned, n).out_channels < before[n].out_channels for n in "abc") >= 2
    for name in "abc":
        conv, old = getattr(pruned, name), before[name]
        assert conv.gain.shape == (conv.out_channels, 1, 1, 1) == (conv.weight.shape[0], 1, 1, 1)
        # Each kept filter keeps its own gain: found by its bias, which is unique per filter.
        rows = [int((old.bias == b).nonzero()) for b in conv.bias]
        assert torch.equal(conv.gain.flatten(), old.gain.flatten()[rows])
    assert export_onnx(pruned, tmp_path / "gain.onnx", (3, 24, 24)).parity.passed


def test_layer_types_with_extra_parameters_get_a_pruner_unless_used_both_ways():
    assert extra_channel_parameters(nn.Conv2d(3, 4, 1)) == [] and extra_channel_parameters(nn.ReLU()) == []
    assert extra_channel_parameters(ScaledStdConv2d(3, 4, 1)) == ["gain"]
    assert isinstance(customized_pruners(GainNet())[ScaledStdConv2d], ExtraParamConvPruner)
    both = nn.Sequential(ScaledStdConv2d(4, 4, 3, groups=4), ScaledStdConv2d(4, 4, 1))
    assert customized_pruners(both) == {}
    assert customized_pruners(nn.Sequential(nn.Conv2d(3, 4, 1))) == {}


def _gmlp(depth: int = 2) -> nn.Module:
    from timm.layers import GatedMlp
    from timm.models.mlp_mixer import MlpMixer, SpatialGatingBlock

    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=depth, embed_dim=32, mlp_ratio=4,
                    block_layer=SpatialGatingBlock, mlp_layer=GatedMlp).eval()


def test_token_mixing_linears_are_found_and_only_them():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    net = _gmlp()
    assert [n for n, m in net.named_modules() if m in find_token_mixing(net, x)] == [
        "blocks.0.mlp_channels.gate.proj", "blocks.1.mlp_channels.gate.proj"]
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1).eval()
    convnext = timm.create_model("convnext_atto", num_classes=10).eval()
    assert find_token_mixing(vit, x) == [] and find_token_mixing(convnext, x) == []


def test_gmlp_prunes_every_block_and_keeps_the_token_axis(tmp_path):
    torch.manual_seed(0)
    net, x = _gmlp(), torch.randn(1, 3, 32, 32)
    before = state_hash(net)
    result = prune(net, x, target_macs=0.6)
    assert state_hash(net) == before
    assert set(result.ignored) == {"head"}, result.ignored
    pruned = result.model
    for block in pruned.blocks:
        gate = block.mlp_channels.gate
        assert gate.proj.weight.shape == (16, 16), "the token axis (16 patches) is never pruned"
        assert gate.norm.normalized_shape[0] * 2 == block.mlp_channels.fc1.out_features
        assert block.mlp_channels.fc2.in_features == gate.norm.normalized_shape[0] < 64
    assert abs(result.macs_kept - 0.6) <= 0.02
    assert export_onnx(pruned, tmp_path / "gmlp.onnx", (3, 32, 32)).parity.passed


def test_a_group_mapped_outside_a_layer_is_left_alone_and_the_plan_is_consistent():
    # CSP-Darknet's "focus" stem: Torch-Pruning maps some groups past conv_exp's channels.
    torch.manual_seed(0)
    model = timm.create_model("cs3darknet_focus_s", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, target_macs=0.5)
    outside = [n for n, why in result.ignored.items() if "Torch-Pruning mapped the group to" in why]
    assert outside, result.ignored
    for m in result.model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels and m.weight.shape[1] * m.groups == m.in_channels


class WindowNet(nn.Module):
    """Tokens -> Swin window attention (2 heads of 8, relative-position bias per head) -> mean -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.swin_transformer import WindowAttention

        self.embed = nn.Linear(6, 16)
        self.attn = WindowAttention(16, num_heads=2, window_size=4)
        with torch.no_grad():
            self.attn.relative_position_bias_table.normal_(0, 1)  # a bias that matters, so a wrong one shows
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x)).mean(1))


def test_hidden_scores_keep_the_bias_table_out_of_the_qkv_group():
    import torch_pruning as tp

    from pfgdf_plugin.models.attention_scores import hidden_scores

    net, x = WindowNet().eval(), torch.randn(1, 16, 6)
    table = net.attn.relative_position_bias_table
    plain = tp.DependencyGraph().build_dependency(net, x)
    with hidden_scores():
        hidden = tp.DependencyGraph().build_dependency(net, x)

    def members(graph):
        group = graph.get_pruning_group(net.attn.qkv, tp.prune_linear_out_channels, [0])
        return {dep.target.module for dep, _ in group}

    assert table in members(plain), "Torch-Pruning alone puts the bias table (2 heads) into the channel group"
    assert table not in members(hidden) and net.attn.proj in members(hidden)


def test_swin_attention_loses_head_dimensions_and_computes_the_kept_ones_exactly(tmp_path):
    torch.manual_seed(0)
    net, x = WindowNet().eval(), torch.randn(1, 16, 6)
    original = copy.deepcopy(net)
    result = prune(net, x, target_macs=0.75, ignored_layers=[net.embed, net.attn.proj])  # only qkv can shrink
    assert set(result.ignored) == {"head", "embed", "attn.proj"}, result.ignored
    attn = result.model.attn
    d = attn.qkv.out_features // 6
    assert 1 <= d < 8 and attn.num_heads == 2 and attn.head_dim == d and attn.scale == d ** -0.5
    assert attn.relative_position_bias_table.shape == (49, 2), "the bias per head is untouched"
    # Reference: the original block in float64 with the removed dimensions of q, k and v zeroed. k's rows are
    # unscaled, so they tell which dimensions were kept (q's rows are rescaled to keep the softmax scale).
    ref = copy.deepcopy(original).double()
    w = original.attn.qkv.weight.view(3, 2, 8, -1)
    kept_k = result.model.attn.qkv.weight.view(3, 2, d, -1)[1].double()
    for h in range(2):
        kept = [int(torch.cdist(r[None], w[1, h].double()).argmin()) for r in kept_k[h]]
        assert torch.allclose(w[1, h][kept].double(), kept_k[h])
        gone = [i for i in range(8) if i not in kept]
        with torch.no_grad():
            for part in range(3):
                rows = [part * 16 + h * 8 + i for i in gone]
                ref.attn.qkv.weight[rows] = 0
                ref.attn.qkv.bias[rows] = 0
    with torch.no_grad():
        got = copy.deepcopy(result.model).double()(x.double())
        assert torch.allclose(got, ref(x.double()), rtol=0, atol=1e-9), (got - ref(x.double())).abs().max()
    assert export_onnx(result.model, tmp_path / "swin.onnx", (16, 6)).parity.passed


class HeldSplit(nn.Module):
    """MambaOut's gated block in small: fc1 -> split by ``self.sizes`` (an attribute) into g, i, c -> a 1x1 conv
    on c, channels last -> act(g) * cat(i, c) -> fc2. The attribute must follow the pruned parts, and the
    concatenation's index mapping needs i's width, which Torch-Pruning infers as the split's whole input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.sizes = (6, 2, 4)
        self.conv = nn.Conv2d(4, 4, 1)
        self.fc2 = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, 6), channels last
        g, i, c = torch.split(self.fc1(x), self.sizes, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(torch.relu(g) * torch.cat((i, c), dim=-1)).mean((1, 2))


def test_split_sizes_held_in_an_attribute_follow_the_pruned_parts(tmp_path):
    torch.manual_seed(0)
    net, x = HeldSplit().eval(), torch.randn(1, 4, 4, 6)
    result = prune(net, x, target_macs=0.6)
    assert set(result.ignored) == {"fc2"}, result.ignored  # the classifier
    pruned = result.model
    g, i, c = pruned.sizes
    assert isinstance(pruned.sizes, tuple) and g + i + c == pruned.fc1.out_features < 12
    assert c == pruned.conv.in_channels and g == i + pruned.conv.out_channels == pruned.fc2.in_features
    assert export_onnx(pruned, tmp_path / "split.onnx", (4, 4, 6)).parity.passed


def test_a_concatenation_through_a_permute_is_mapped_by_its_traced_widths():
    import torch_pruning as tp

    from pfgdf_plugin._compat.torch_pruning import ordered_split_mapping
    from pfgdf_plugin.pruning.graph import build_graph

    net, x = HeldSplit().eval(), torch.randn(1, 4, 4, 6)
    graph = build_graph(net, x, original=net, timeout=None)
    with ordered_split_mapping():
        group = graph.get_pruning_group(net.conv, tp.prune_conv_out_channels, [1])
    fc2_in = [sorted(int(i) for i in idxs) for dep, idxs in group if dep.target.module is net.fc2]
    assert fc2_in == [[3]], fc2_in  # conv output 1 is position 2 + 1 of the concatenation


def test_focalnet_gates_broadcast_over_channels_and_every_group_prunes(tmp_path):
    torch.manual_seed(0)
    from timm.models.focalnet import FocalNet

    model = FocalNet(depths=(1, 1, 1, 1), embed_dim=32, num_classes=10).eval()  # FocalNet-T's block, smaller
    x = torch.randn(1, 3, 64, 64)
    before = state_hash(model)
    result = prune(model, x, target_macs=0.5)
    assert state_hash(model) == before
    assert set(result.ignored) == {"head.fc"}, result.ignored  # 48 groups of FocalNet-T ran away before
    mods = [b.modulation for stage in result.model.layers for b in stage.blocks]
    # f's outputs are q (read with h's outputs), ctx (h's inputs) and 3 gates, which stay.
    assert all(m.f.out_channels == m.h.out_channels + m.h.in_channels + 3 for m in mods)
    assert all(list(m.input_split) == [m.h.out_channels, m.h.in_channels, 3] for m in mods)
    assert any(m.f.out_channels < 2 * 32 * 2 ** i + 3 for i, m in enumerate(mods))
    assert abs(result.macs_kept - 0.5) <= 0.02
    assert export_onnx(result.model, tmp_path / "focal.onnx", (3, 64, 64)).parity.passed


def test_split_sizes_built_from_integer_attributes_follow_the_pruned_parts(tmp_path):
    # FasterNet's partial conv: torch.split(x, [self.dim_conv3, self.dim_untouched], 1), a list built in forward.
    torch.manual_seed(0)
    model = timm.create_model("fasternet_t0", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, target_macs=0.5)
    assert set(result.ignored) == {"classifier"}, result.ignored
    before = [b.spatial_mixing for stage in model.stages for b in stage.blocks]
    after = [b.spatial_mixing for stage in result.model.stages for b in stage.blocks]
    assert all(m.dim_conv3 == m.partial_conv3.in_channels for m in after)
    shrunk = [a.dim_conv3 + a.dim_untouched < b.dim_conv3 + b.dim_untouched for a, b in zip(after, before, strict=True)]
    assert sum(shrunk) >= 4
    assert export_onnx(result.model, tmp_path / "faster.onnx", (3, 64, 64)).parity.passed


def test_sknet_attention_over_two_paths_prunes_and_every_layer_declares_what_it_holds():
    # SKNet's attention selects between two paths with reshape(B, 2, C): Torch-Pruning reaches each path channel
    # from two root channels. Merged once, the group prunes; counted twice, the pruners made paths.0.conv declare
    # 32 outputs while holding 38 (the 2026-12-02 sweep).
    from pfgdf_plugin.studies.coverage.plan import _tensor_mismatch

    torch.manual_seed(0)
    net = timm.create_model("skresnet18", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    result = prune(net, x, target_macs=0.5)
    assert not any("select" in name for name in result.ignored), result.ignored
    assert result.model.layer1[0].conv1.paths[0].conv.out_channels < 64
    mismatched = {n: why for n, m in result.model.named_modules() if (why := _tensor_mismatch(m))}
    assert mismatched == {}
    assert abs(result.macs_kept - 0.5) <= 0.01 and result.model(x).shape == (1, 10)
