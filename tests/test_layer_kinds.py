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
