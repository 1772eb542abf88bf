"""Split convolutions (a channel split, one conv per part with its own kernel size, a concatenation): MixNet's
``MixedConv2d`` is pruned part by part, each part keeps what its input lost, and nothing is left alone."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch_pruning as tp
from timm.layers import MixedConv2d

from pfgdf_plugin import prune
from pfgdf_plugin.deploy.onnx import export_onnx
from pfgdf_plugin.pruning.mixed import find_split_convs


class SplitNet(nn.Module):
    """conv -> split [4, 4] -> 3x3 and 5x5 convs -> concat -> 1x1 conv (no norm, no activation, no part bias:
    a removed channel is exactly a zeroed one)."""

    def __init__(self, depthwise: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.mix = MixedConv2d(8, 8 if depthwise else 12, kernel_size=[3, 5], depthwise=depthwise)
        self.b = nn.Conv2d(self.mix.out_channels, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.mix(self.a(x)))


def _kept(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which of ``original``'s slices (along dim 0) ``pruned`` kept, in order, matched by value."""
    flat_o, flat_p = original.flatten(1), pruned.flatten(1)
    kept = [int(torch.cdist(row[None], flat_o).argmin()) for row in flat_p]
    assert torch.allclose(flat_o[kept], flat_p), "a kept slice does not match any original slice"
    return kept


def _zeroed_reference(net: SplitNet, pruned: SplitNet) -> SplitNet:
    """``net`` in float64 with every channel the pruned net dropped set to zero (found by matching weights)."""
    ref = copy.deepcopy(net).double()
    kept_a = _kept(net.a.weight, pruned.a.weight)
    kept_b_in = _kept(net.b.weight.transpose(0, 1), pruned.b.weight.transpose(0, 1))
    with torch.no_grad():
        drop_a = [c for c in range(8) if c not in kept_a]
        ref.a.weight[drop_a] = 0
        ref.a.bias[drop_a] = 0
        offset = 0
        for part in ref.mix.values():
            for j in range(part.out_channels):
                if offset + j not in kept_b_in:
                    part.weight[j] = 0
            offset += part.out_channels
    return ref


@pytest.mark.parametrize("depthwise", [False, True])
def test_tiny_split_net_prunes_to_a_subnetwork(depthwise: bool) -> None:
    torch.manual_seed(0)
    net = SplitNet(depthwise).eval()
    x = torch.randn(2, 3, 16, 16)
    result = prune(net, x, alpha=1.0, classifier=net.b)
    pruned = result.model
    assert set(result.ignored) == {"b"}
    parts = list(pruned.mix.values())
    assert pruned.mix.splits == [p.in_channels for p in parts]
    assert sum(pruned.mix.splits) == pruned.a.out_channels < 8
    # Each part read the channels of its own slice of `a`: the pruned net equals the zeroed original.
    ref = _zeroed_reference(net, pruned)
    with torch.no_grad():
        got = copy.deepcopy(pruned).double()(x.double())
        want = ref(x.double())
    assert got.shape == (2, 4, 16, 16)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)
    kept_a = _kept(net.a.weight, pruned.a.weight)
    assert pruned.mix.splits == [sum(c < 4 for c in kept_a), sum(c >= 4 for c in kept_a)]


def test_a_part_never_loses_every_channel() -> None:
    torch.manual_seed(0)
    net = SplitNet(depthwise=False).eval()
    low_first_part = torch.tensor([0.1, 0.2, 0.4, 0.3, 5.0, 6.0, 7.0, 8.0])

    def importance(group: tp.dependency.Group) -> torch.Tensor:
        root = group[0].dep.target.module  # prune() scores a copy: `a` is the conv reading the 3 input channels
        return low_first_part if root.in_channels == 3 else torch.full((len(group[0].idxs),), 10.0)

    result = prune(net, torch.randn(1, 3, 16, 16), alpha=1.0, importance=importance, classifier=net.b)
    pruned = result.model
    # Channels 0..3 score below alpha, but the first part keeps its best one (channel 2).
    assert pruned.mix.splits == [1, 4]
    assert _kept(net.a.weight, pruned.a.weight) == [2, 4, 5, 6, 7]
    assert pruned(torch.randn(1, 3, 16, 16)).shape == (1, 4, 16, 16)


@pytest.mark.parametrize("name", ["mixnet_s", "tf_mixnet_s"])
def test_mixnet_reaches_half_the_macs_with_every_group(name: str, tmp_path: object) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, target_macs=0.5)
    assert abs(result.macs_after / result.macs_before - 0.5) <= 0.01
    assert set(result.ignored) == {"classifier"}
    pruned = result.model.eval()
    split_convs = find_split_convs(pruned)
    assert len(split_convs) > 10
    for mixed, parts in split_convs.items():
        assert mixed.splits == [p.in_channels for p in parts]
        assert all(p.in_channels >= 1 and p.out_channels >= 1 for p in parts)
    layers = {layer.name: layer for layer in result.layers}
    for group in result.groups:  # the plan's channel counts are the model's
        assert layers[group.root].out_after == group.channels_after
    assert sum(g.channels_after < g.channels_before for g in result.groups) > len(result.groups) // 2
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    export = export_onnx(pruned, tmp_path / "m.onnx", (3, 64, 64))
    assert export.parity.passed and export.path.exists()
