"""Torch-Pruning internals we rely on (all reached through pfgdf_plugin._compat): fails loudly on a change."""

import inspect

import torch
import torch.nn as nn
import torch_pruning as tp

from pfgdf_plugin._compat import torch_pruning as compat


def _group():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 8, 8))
    return net, graph, graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=list(range(8)))


def test_group_knows_its_graph_and_the_graph_names_modules():
    net, graph, group = _group()
    assert compat.graph_of(group) is graph
    assert compat.module_name(graph, net[3]) == "3"
    assert compat.module_name(graph, nn.ReLU()) == "ReLU"  # unknown to the graph: its class name


def test_group_members_expose_what_criteria_read():
    _, graph, group = _group()
    for item in group:
        dep, idxs = item
        assert isinstance(dep.target.module, nn.Module) and callable(dep.handler)
        assert item.root_idxs is not None and len(item.root_idxs) == len(idxs)
    assert graph.is_out_channel_pruning_fn(group[0].dep.handler)


def test_the_group_search_hot_spots_exist_and_can_be_bounded():
    spots = compat.search_hot_spots()
    assert len(spots) >= 3, "Torch-Pruning's group search changed: bounded_group_search has nothing to bound"
    for owner, name, *_ in spots:
        assert callable(getattr(owner, name)), f"{owner.__name__}.{name} is gone"
    before = [getattr(owner, name) for owner, name, *_ in spots]
    with compat.bounded_group_search(10_000, members=10_000):
        _group()
    assert [getattr(owner, name) for owner, name, *_ in spots] == before  # patched only inside the block


def test_index_mapping_functions_can_be_made_tolerant():
    from torch_pruning.dependency import index_mapping

    names = [n for n in vars(index_mapping) if n.startswith("update_") and n != "update_index_mapping"]
    assert names, "Torch-Pruning's index_mapping module no longer has update_* functions"
    before = {n: getattr(index_mapping, n) for n in names}
    with compat.tolerant_index_mapping():
        assert all(getattr(index_mapping, n) is not before[n] for n in names)
    assert all(getattr(index_mapping, n) is before[n] for n in names)
    assert all(len(inspect.signature(f).parameters) == 2 for f in before.values())


def test_the_macs_counter_tells_counted_modules():
    assert compat.is_counted(nn.Conv2d(3, 4, 3))
    assert not compat.is_counted(nn.Sequential())
