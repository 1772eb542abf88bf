"""Self-healing plans: groups that cannot be pruned consistently are left alone and reported, not fatal;
the dependency-graph build has a time budget; non-default timm configurations prune with their shapes kept."""

import time

import pytest
import timm
import torch
import torch.nn as nn

from pfgdf_plugin import prune
from pfgdf_plugin._compat import torch_pruning as compat
from pfgdf_plugin._util.budget import BudgetExceeded, DeadlineExceeded, counted_calls
from pfgdf_plugin.pruning.errors import GraphTimeoutError
from pfgdf_plugin.pruning.groups import GROUP_SEARCH_WORK
from tests.conftest import state_hash


class FixedScale(nn.Module):
    """A per-channel scale reshaped to a size fixed at construction (like PoolFormer's layer scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(self.channels, 1, 1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), FixedScale(16),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def test_inconsistent_group_is_left_alone_and_reported():
    model, x = _net(), torch.randn(2, 3, 16, 16)
    before = state_hash(model)
    result = prune(model, x, alpha=1.5)
    assert state_hash(model) == before, "the trials must run on copies"
    assert "0" in result.ignored and "breaks the model" in result.ignored["0"]
    assert "shape '[16, 1, 1]' is invalid" in result.ignored["0"]
    pruned = result.model
    assert pruned[0].out_channels == 16 and pruned[3].gamma.numel() == 16
    assert pruned[4].out_channels < 32 or pruned[7].out_channels < 32, "the other groups are still pruned"
    assert pruned(x).shape == (2, 10)


def test_healed_search_still_meets_the_target():
    model, x = _net(), torch.randn(1, 3, 16, 16)
    result = prune(model, x, target_macs=0.6)
    assert "0" in result.ignored
    assert abs(result.macs_kept - 0.6) <= 0.01 and result.extra["target_met"]


def test_inplace_heals_on_copies_then_prunes_the_model():
    model, x = _net(), torch.randn(1, 3, 16, 16)
    expected = prune(model, x, alpha=1.5)
    result = prune(model, x, alpha=1.5, inplace=True)
    assert result.model is model and model[0].out_channels == 16
    assert [m.weight.shape for m in model if isinstance(m, nn.Conv2d)] == [
        m.weight.shape for m in expected.model if isinstance(m, nn.Conv2d)
    ]


def test_counted_calls_stop_a_runaway_loop_at_the_same_step_however_slow():
    class Search:
        def step(self) -> None:
            pass

    for pause in (0.0, 0.0005):  # a fast and a ten-times-slower machine stop at the same count
        with pytest.raises(BudgetExceeded, match="within 50 units of work"), counted_calls(50, [(Search, "step")]) as c:
            while True:
                time.sleep(pause)
                Search().step()
        assert c.calls == 51
    assert Search.step.__qualname__.endswith("Search.step"), "the method is restored after the block"


def test_weighed_calls_count_the_work_they_do_not_the_calls():
    class Mapping:
        def __call__(self, idxs: list) -> list:
            return idxs

    spots = [(Mapping, "__call__", lambda _self, idxs: len(idxs))]
    with pytest.raises(BudgetExceeded), counted_calls(1000, spots) as big:
        for _ in range(20):
            Mapping()(list(range(300)))  # the 4th call maps indices 901..1200: over the limit
    with pytest.raises(BudgetExceeded), counted_calls(1000, spots) as small:
        for _ in range(2000):
            Mapping()([0])
    assert big.calls == 1200 and small.calls == 1001
    with counted_calls(None, spots) as empty:
        Mapping()([])
    assert empty.calls == 1, "a call that maps nothing still counts as one unit"


def test_a_passed_deadline_is_a_different_exception():
    class Search:
        def step(self) -> None:
            pass

    with pytest.raises(DeadlineExceeded), counted_calls(None, [(Search, "step")], deadline=time.perf_counter()):
        for _ in range(5000):
            Search().step()


def test_graph_build_over_budget_is_a_clear_error_and_leaves_the_model_alone():
    model = timm.create_model("resnet18", num_classes=10)
    before = state_hash(model)
    with pytest.raises(GraphTimeoutError, match=r"ResNet.*graph_timeout=0.001 s.*ignored_layers"):
        prune(model, torch.randn(1, 3, 64, 64), target_macs=0.5, graph_timeout=0.001)
    assert state_hash(model) == before


def test_bad_graph_timeout_is_rejected():
    with pytest.raises(ValueError, match="graph_timeout"):
        prune(_net(), torch.randn(1, 3, 16, 16), alpha=1.0, graph_timeout=-1)


@pytest.mark.parametrize(
    ("name", "kwargs", "channels"),
    [
        ("resnet18", {"features_only": True}, 3),
        ("mobilenetv3_small_050", {"features_only": True, "out_indices": (2, 4)}, 3),
        ("resnet18", {"in_chans": 1, "num_classes": 7}, 1),
        ("mobilenetv3_small_050", {"in_chans": 1, "num_classes": 3}, 1),
    ],
)
def test_non_default_configurations_keep_their_output_shapes(name, kwargs, channels):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(1, channels, 80, 96)  # not square, not the default size
    result = prune(model, x, target_macs=0.5)

    def shapes(m):
        out = m(x)
        return [o.shape for o in out] if isinstance(out, list) else [out.shape]

    assert shapes(result.model) == shapes(model)
    assert result.macs_kept <= 0.8
    if kwargs.get("features_only"):
        assert any("output" in why for why in result.ignored.values())


def test_cli_ignore_names_layers_and_rejects_unknown_ones(tmp_path, capsys):
    from pfgdf_plugin.cli import main
    from pfgdf_plugin.models.saved import load_pruned

    out = tmp_path / "m.pt"
    common = ["prune", "--model", "resnet18", "--num-classes", "10", "--input-size", "32", "--alpha", "1.0",
              "--output", str(out), "--quiet"]
    assert main([*common, "--ignore", "layer1.0.conv9"]) == 2
    err = capsys.readouterr().err
    assert "no module 'layer1.0.conv9'" in err and "layer1.0.conv1" in err and not out.exists()
    assert main([*common, "--ignore", "layer1.0.conv1", "layer2.0.conv1"]) == 0
    pruned = load_pruned(out)
    assert pruned.layer1[0].conv1.out_channels == 64 and pruned.layer2[0].conv1.out_channels == 128
    assert pruned.layer3[0].conv1.out_channels < 256


def test_runaway_group_search_is_left_alone_and_the_rest_is_pruned():
    # SHViT's single-head attention (a conv qkv split into q, k, v over the whole feature map) makes the group
    # search of its qkv convolutions run away even visiting each (channel, root channel) pair once.
    torch.manual_seed(0)
    model = timm.create_model("shvit_s1", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, target_macs=0.5)
    runaway = [name for name, why in result.ignored.items()
               if f"dependency search ran away (over {GROUP_SEARCH_WORK:,} units of work" in why]
    assert runaway and all(name.endswith("mixer.m.qkv.c") for name in runaway)
    assert abs(result.macs_kept - 0.5) <= 0.01 and result.model(x).shape == (1, 10)


def test_covering_search_finds_the_groups_torch_pruning_finds_and_the_ones_it_ran_away_from(monkeypatch):
    """ReXNet's partial-channel residuals sent Torch-Pruning's own search round in circles (the same channels
    in another order): with `covering_search` every group is found, and each group Torch-Pruning's search does
    finish holds exactly the same (channel, root channel) pairs per member."""
    from pfgdf_plugin.pruning import groups as groups_module
    from pfgdf_plugin.pruning.graph import build_graph

    torch.manual_seed(0)
    model = timm.create_model("rexnet_100", num_classes=10).eval()
    graph = build_graph(model, torch.randn(1, 3, 64, 64), original=model, timeout=None)

    def listed():
        found, skipped = groups_module.enumerate_groups(graph, [], model=model, timeout=None)
        return {groups_module.module_name(graph, g[0].dep.target.module): _pairs(g) for g in found}, skipped

    covered, covered_skipped = listed()
    monkeypatch.setattr(groups_module, "group_search", compat.ordered_split_mapping)
    plain, plain_skipped = listed()
    assert not covered_skipped
    assert plain_skipped and all("ran away" in why for why in plain_skipped.values())
    members = {name.split(" (")[0] for pairs in covered.values() for name, handler, _ in pairs
               if handler.endswith("out_channels")}
    assert set(plain_skipped) <= members  # a root it ran away from is now in a group (its own or an earlier one)
    both = set(plain) & set(covered)  # a root of plain's may be in a group plain ran away from
    assert len(both) >= len(covered) - len(plain_skipped)
    assert {root: covered[root] for root in both} == {root: plain[root] for root in both}


def _pairs(group):
    return sorted((str(it.dep.target.name), it.dep.handler.__name__,
                   tuple(sorted(zip(it.idxs, it.root_idxs, strict=True)))) for it in group)


def test_the_plan_is_the_same_on_a_much_slower_machine(monkeypatch):
    """Every step of Torch-Pruning's group search slowed down: the same groups are left alone, the same plan."""
    torch.manual_seed(0)
    model = timm.create_model("shvit_s1", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    fast = prune(model, x, target_macs=0.5)
    for owner, name, *_ in compat.search_hot_spots():
        original = getattr(owner, name)

        def slow(*args, _original=original, **kwargs):
            end = time.perf_counter() + 20e-6  # busy-wait: a CPU several times slower
            while time.perf_counter() < end:
                pass
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, slow)
    slow = prune(model, x, target_macs=0.5)
    assert slow.ignored == fast.ignored
    assert [(g.root, g.channels_after) for g in slow.groups] == [(g.root, g.channels_after) for g in fast.groups]
