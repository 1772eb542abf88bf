"""PFGDFImportance against an independent float64 computation, per member type and for whole groups."""

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin import PFGDFImportance
from pfgdf_plugin.criteria import channel_slices
from tests.reference import gaussian_z, layer_z, statistic, to_np


def _group(model, layer, fn, x, idxs=None):
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    n = graph.get_out_channels(layer) if graph.is_out_channel_pruning_fn(fn) else graph.get_in_channels(layer)
    return graph.get_pruning_group(layer, fn, list(range(n)) if idxs is None else idxs)


@pytest.mark.parametrize("kind", ["l1", "l2", "mean"])
@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 5, 1)), torch.randn(1, 3, 9, 9)),
        (lambda: nn.Sequential(nn.Conv2d(3, 12, 3), nn.Conv2d(12, 12, 3, groups=12), nn.Conv2d(12, 4, 1)),
         torch.randn(1, 3, 9, 9)),
        (lambda: nn.Sequential(nn.ConvTranspose2d(3, 10, 2, stride=2), nn.Conv2d(10, 4, 1)), torch.randn(1, 3, 5, 5)),
        (lambda: nn.Sequential(nn.Linear(6, 14), nn.ReLU(), nn.Linear(14, 3)), torch.randn(2, 6)),
    ],
    ids=["conv", "depthwise-chain", "conv-transpose", "linear"],
)
def test_z_matches_float64_reference(make, x, kind):
    model = make().eval()
    root = model[0]
    fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else (
        tp.prune_conv_out_channels)
    group = _group(model, root, fn, x)
    got = to_np(PFGDFImportance(statistic=kind)(group))
    filters = [m for m in model if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    # The producing layer, plus a depthwise conv that carries the same channels, are the scored filters.
    scored = [filters[0]] + [m for m in filters[1:] if getattr(m, "groups", 1) > 1]
    expected = np.mean([layer_z(m, kind) for m in scored], axis=0)
    assert got.shape == (filters[0].weight.shape[1 if filters[0].__class__.__name__.startswith("ConvT") else 0],)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_grouped_conv_input_slices_cover_only_their_group():
    conv = nn.Conv2d(8, 6, 3, groups=2)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), conv).eval()
    group = _group(model, model[0], tp.prune_conv_out_channels, torch.randn(1, 3, 7, 7))
    (inp,) = [s for s in channel_slices(group) if s.role == "in"]
    rows = inp.rows()
    w = conv.weight.detach()  # [6, 4, 3, 3]: out 0-2 read in 0-3, out 3-5 read in 4-7
    assert tuple(rows.shape) == (8, 3 * 9)
    torch.testing.assert_close(rows[1], w[0:3, 1].flatten())
    torch.testing.assert_close(rows[6], w[3:6, 2].flatten())


def test_residual_group_is_mean_of_every_coupled_filter_layer():
    model = timm.create_model("resnet18", num_classes=10).eval()
    group = _group(model, model.conv1, tp.prune_conv_out_channels, torch.randn(1, 3, 64, 64))
    got = to_np(PFGDFImportance()(group))
    coupled = [model.conv1, model.layer1[0].conv2, model.layer1[1].conv2]
    np.testing.assert_allclose(got, np.mean([layer_z(m) for m in coupled], axis=0), rtol=1e-12)


def test_partial_index_group_scores_those_channels_against_the_whole_layer():
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.Conv2d(10, 2, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    got = to_np(PFGDFImportance()(_group(model, model[0], tp.prune_conv_out_channels, x, idxs=[2, 6, 9])))
    np.testing.assert_allclose(got, layer_z(model[0])[[2, 6, 9]], rtol=1e-12)


def test_fallback_to_input_channels_when_the_group_has_no_filters():
    model = nn.Sequential(nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3)).eval()
    group = _group(model, model[0], tp.prune_batchnorm_out_channels, torch.randn(1, 6, 8, 8))
    w = model[1].weight.detach().double().numpy()
    expected = gaussian_z(statistic(np.swapaxes(w, 0, 1).reshape(6, -1), "l1"))
    np.testing.assert_allclose(to_np(PFGDFImportance()(group)), expected, rtol=1e-12)


def test_fallback_to_norm_scales_when_nothing_else_is_prunable():
    bn = nn.BatchNorm2d(7)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-2.0, 3.0, 7))
    model = nn.Sequential(bn).eval()
    group = _group(model, bn, tp.prune_batchnorm_out_channels, torch.randn(1, 7, 4, 4))
    expected = gaussian_z(np.abs(np.linspace(-2.0, 3.0, 7)))
    np.testing.assert_allclose(to_np(PFGDFImportance()(group)), expected, rtol=1e-6)


def test_constant_layer_scores_as_an_ideal_gaussian_and_single_channel_gives_zero_z():
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.Conv2d(5, 1, 1), nn.Conv2d(1, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.fill_(0.25)
    x = torch.randn(1, 3, 4, 4)
    # The expected |z| quantiles of a standard normal, ascending: |Phi^-1((k + 0.5) / 5)| (scipy-free reference).
    from statistics import NormalDist

    quantiles = sorted(abs(NormalDist().inv_cdf((k + 0.5) / 5)) for k in range(5))
    np.testing.assert_allclose(to_np(PFGDFImportance()(_group(model, model[0], tp.prune_conv_out_channels, x))),
                               quantiles, rtol=1e-12, atol=1e-15)
    assert torch.equal(PFGDFImportance()(_group(model, model[1], tp.prune_conv_out_channels, x)),
                       torch.zeros(1, dtype=torch.float64))


def test_nan_weights_raise_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 2, 1)).eval()
    group = _group(model, model[0], tp.prune_conv_out_channels, torch.randn(1, 3, 8, 8))
    with torch.no_grad():
        model[0].weight[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer '0' has NaN or Inf weights"):
        PFGDFImportance()(group)


@pytest.mark.parametrize("kwargs, match", [
    ({"statistic": "l3"}, "statistic must be one of"),
    ({"group_reduction": "median"}, "group_reduction must be one of"),
])
def test_unknown_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PFGDFImportance(**kwargs)


def test_drop_in_global_pruning_with_stock_metapruner():
    model = timm.create_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    before = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    pruner = tp.pruner.MetaPruner(model, x, importance=PFGDFImportance(), pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model.fc])
    pruner.step()
    after = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(x).shape == (1, 10)
    assert 0.35 * before < after < 0.65 * before
    assert model.fc.out_features == 10
