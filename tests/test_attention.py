"""Attention pruning: whole heads or head dimensions leave q, k and v together, the block follows, the function is
exact (against a float64 masked reference of the unpruned model) and exports with parity."""

import copy

import pytest
import timm
import torch
import torch.nn as nn

from pfgdf_plugin import export_onnx, prune
from pfgdf_plugin.pruning.attention import HeadLayout, find_heads, head_dim_changes, update_heads


def _vit(depth: int = 2, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=depth, **kwargs
    ).eval()


def test_find_heads_reads_timm_attention():
    vit = _vit()
    layouts = find_heads(vit)
    assert set(layouts) == {b.attn.qkv for b in vit.blocks}
    layout = layouts[vit.blocks[0].attn.qkv]
    assert (layout.parts, layout.num_heads, layout.head_dim, layout.channels) == (3, 3, 64, 576)
    assert find_heads(timm.create_model("resnet18")) == {}


def test_unit_rule_dims_only_where_the_forward_allows_and_they_are_finer():
    # ViT-Tiny: 3 heads of 64 -> one dimension of every head (9 channel groups of 64 positions).
    layout = next(iter(find_heads(_vit(depth=1)).values()))
    assert (layout.unit, layout.ch_groups, layout.unit_channels) == ("dim", 9, 1)
    # A LayerNorm over head_dim (qk_norm) mixes the dimensions: whole heads.
    normed = next(iter(find_heads(_vit(depth=1, qk_norm=True)).values()))
    assert (normed.unit, normed.ch_groups, normed.unit_channels) == ("head", 3, 64)
    # 16 heads of 12: heads are the finer unit.
    many = next(iter(find_heads(_vit(depth=1, num_heads=16)).values()))
    assert (many.unit, many.num_heads, many.head_dim, many.ch_groups, many.unit_channels) == ("head", 16, 12, 3, 12)


def test_update_heads_rejects_a_cut_through_a_head():
    vit = _vit(depth=1)
    layouts = find_heads(vit)
    attn = vit.blocks[0].attn
    attn.qkv = nn.Linear(192, 575)  # not a whole number of heads any more
    for unit in ("head", "dim"):  # 575 is neither 3 x 64 x heads nor 3 x 3 x head_dim
        layouts = {attn.qkv: HeadLayout(attn, attn.qkv, 3, 3, 64, unit)}
        try:
            update_heads(layouts)
        except RuntimeError as err:
            assert "not a whole number of heads" in str(err)
        else:
            raise AssertionError("a projection cut through a head must be refused")
        assert (attn.num_heads, attn.head_dim, attn.attn_dim) == (3, 64, 192)


def test_heads_pruned_equal_heads_masked_in_the_original(tmp_path):
    # Prune only the qkv groups; removing head h must equal zeroing its columns of the output projection
    # in the unpruned model (an independent, float64 reference of what dropping a head means). 16 heads of 12
    # dimensions: whole heads are the finer unit.
    heads, dim = 16, 12
    vit = _vit(num_heads=heads)
    others = [m for n, m in vit.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith("qkv")]
    x = torch.randn(2, 3, 32, 32)
    result = prune(vit, x, alpha=1.2, ignored_layers=others)
    pruned = result.model
    assert result.extra["attention_heads"], "alpha=1.2 should remove some heads"

    reference = _vit(num_heads=heads).double()
    for block, old, new in zip(vit.blocks, reference.blocks, pruned.blocks, strict=True):
        qkv_old, qkv_new = block.attn.qkv.weight, new.attn.qkv.weight
        kept = [h for h in range(heads) if _head_kept(qkv_old, qkv_new, h, dim)]
        assert new.attn.num_heads == len(kept) == qkv_new.shape[0] // (3 * dim) and new.attn.head_dim == dim
        assert new.attn.attn_dim == dim * len(kept) == new.attn.proj.in_features and new.attn.scale == dim ** -0.5
        # q, k and v keep the same heads: each third of the new weight is the same heads of the old one.
        for part in range(3):
            rows = torch.cat([qkv_old[part * 192 + h * dim: part * 192 + (h + 1) * dim] for h in kept])
            assert torch.equal(qkv_new[part * dim * len(kept): (part + 1) * dim * len(kept)], rows)
        with torch.no_grad():
            for h in set(range(heads)) - set(kept):
                old.attn.proj.weight[:, h * dim:(h + 1) * dim] = 0
    with torch.no_grad():
        expected = reference(x.double())
        got = copy.deepcopy(pruned).double()(x.double())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert export_onnx(pruned, tmp_path / "heads.onnx", (3, 32, 32)).parity.relative_error <= 1e-4


def _head_kept(old: torch.Tensor, new: torch.Tensor, h: int, dim: int) -> bool:
    q_old = old[h * dim:(h + 1) * dim]
    heads_new = new.shape[0] // (3 * dim)
    return any(torch.equal(new[j * dim:(j + 1) * dim], q_old) for j in range(heads_new))


def _kept_dims(old: torch.Tensor, new: torch.Tensor, part: int, heads: int = 3, dim: int = 64) -> list[list[int]]:
    """Per head, which old dimensions the new rows of ``part`` (1: k, 2: v; exact copies) are."""
    kept_dim = new.shape[0] // (3 * heads)
    found = []
    for h in range(heads):
        rows = new[part * heads * kept_dim + h * kept_dim: part * heads * kept_dim + (h + 1) * kept_dim]
        base = part * heads * dim + h * dim
        found.append([next(d for d in range(dim) if torch.equal(old[base + d], row)) for row in rows])
    return found


def test_head_dims_pruned_equal_dims_masked_in_the_original():
    # Prune only the qkv groups by head dimensions; the pruned model must equal the unpruned one (float64) with
    # the removed q, k and v rows zeroed: q . k loses exactly those terms, the softmax scale stays 64 ** -0.5.
    vit = _vit()
    others = [m for n, m in vit.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith("qkv")]
    x = torch.randn(2, 3, 32, 32)
    result = prune(vit, x, alpha=1.0, ignored_layers=others)
    pruned = result.model
    assert result.extra["attention_heads"] == {}, "head dimensions go, never whole heads, in ViT-Tiny"
    reference = _vit().double()
    for block, old, new in zip(vit.blocks, reference.blocks, pruned.blocks, strict=True):
        w_old, w_new, b_old, b_new = block.attn.qkv.weight, new.attn.qkv.weight, block.attn.qkv.bias, new.attn.qkv.bias
        dim = new.attn.head_dim
        assert 1 <= dim < 64 and new.attn.num_heads == 3 and tuple(w_new.shape) == (9 * dim, 192)
        assert new.attn.attn_dim == 3 * dim == new.attn.proj.in_features and new.attn.scale == dim ** -0.5
        k_dims, v_dims = _kept_dims(w_old, w_new, 1), _kept_dims(w_old, w_new, 2)
        assert k_dims == v_dims == [k_dims[0]] * 3, "every head keeps the same dimensions in k and v"
        kept = k_dims[0]
        old_rows = [h * 64 + d for h in range(3) for d in kept]
        # q keeps the same rows, rescaled by sqrt(dim / 64) so that the new scale gives the trained logits.
        factor = (dim / 64) ** 0.5
        torch.testing.assert_close(w_new[:3 * dim].double(), w_old[old_rows].double() * factor, rtol=1e-6, atol=0)
        torch.testing.assert_close(b_new[:3 * dim].double(), b_old[old_rows].double() * factor, rtol=1e-6, atol=0)
        removed = [h * 64 + d for h in range(3) for d in range(64) if d not in kept]
        with torch.no_grad():
            for part in range(3):
                rows = [part * 192 + r for r in removed]
                old.attn.qkv.weight[rows] = 0
                old.attn.qkv.bias[rows] = 0
    layouts = {b.attn.qkv: HeadLayout(b.attn, b.attn.qkv, 3, 3, 64, "dim") for b in pruned.blocks}
    assert head_dim_changes(layouts) == [(b.attn, 64, b.attn.head_dim) for b in pruned.blocks]
    test = copy.deepcopy(pruned).double()
    with torch.no_grad():
        expected = reference(x.double())
        fused = test(x.double())
        for block in test.blocks:
            block.attn.fused_attn = False  # timm's explicit path multiplies by self.scale
        explicit = test(x.double())
    # Only the q rescale is rounded (once, in float32); a wrong dimension would be off by far more.
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explicit, expected, rtol=1e-5, atol=1e-5)
    assert (expected - _vit().double()(x.double())).abs().max() > 1e-3, "the masked reference must differ"


def test_pruned_vit_meets_target_by_head_dims_and_exports(tmp_path):
    vit = _vit(depth=2)
    x = torch.randn(1, 3, 32, 32)
    result = prune(vit, x, target_macs=0.5)
    assert abs(result.macs_kept - 0.5) <= 0.01
    for block in result.model.blocks:
        attn = block.attn
        assert attn.num_heads == 3 and attn.head_dim < 64
        assert attn.qkv.out_features == 9 * attn.head_dim
        assert attn.proj.in_features == attn.attn_dim == 3 * attn.head_dim
    assert result.model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    export = export_onnx(result.model, tmp_path / "vit.onnx", (3, 32, 32))
    assert export.parity.relative_error <= 1e-4


def test_glu_halves_lose_the_same_positions():
    # timm's GluMlp: fc1 -> chunk(2) -> value * act(gate) -> fc2. Both halves must lose the same positions,
    # which must equal zeroing those inputs of fc2 in the unpruned model.
    from timm.layers import GluMlp

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), GluMlp(16, 64, act_layer=nn.SiLU), nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    result = prune(net, x, alpha=0.9, ignored_layers=[net[0], net[1].fc2])
    old, new = net[1], result.model[1]
    half = new.fc2.in_features
    assert half < 32 and new.fc1.out_features == 2 * half and tuple(new.fc2.weight.shape) == (16, half)
    kept = [next(i for i in range(32) if torch.equal(old.fc1.weight[i], row)) for row in new.fc1.weight[:half]]
    assert torch.equal(new.fc1.weight[half:], old.fc1.weight[[k + 32 for k in kept]])
    reference = copy.deepcopy(net).double()
    with torch.no_grad():
        reference[1].fc2.weight[:, [i for i in range(32) if i not in kept]] = 0
        torch.testing.assert_close(result.model.double()(x.double()), reference(x.double()), rtol=1e-9, atol=1e-9)


_SEPARATE_V = {
    "tnt": lambda: timm.create_model("tnt_s_legacy_patch16_224", num_classes=10, img_size=32, depth=1),
    "convit_gpsa": lambda: timm.create_model("convit_tiny", num_classes=10, img_size=32, patch_size=8, depth=2,
                                             local_up_to_layer=2),
}


@pytest.mark.parametrize("name", sorted(_SEPARATE_V))
def test_separate_value_projections_lose_the_same_dimensions_in_every_head(name):
    # TNT's and ConViT's GPSA's v is its own layer (q and k share another): v may lose dimensions on its own, the
    # same ones in every head. Only the v groups pruned: the model must equal the unpruned one (float64) with
    # those v rows zeroed.
    def _make() -> nn.Module:
        torch.manual_seed(0)
        return _SEPARATE_V[name]().eval()

    net = _make()
    values = [n for n, m in net.named_modules() if n.endswith(".v") and isinstance(m, nn.Linear)]
    layouts = find_heads(net)
    assert {n for n, m in net.named_modules() if m in layouts and layouts[m].parts == 1} == set(values)
    others = [m for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in values]
    x = torch.randn(2, 3, 32, 32)
    result = prune(net, x, alpha=1.0, ignored_layers=others)
    reference = _make().double()
    old_modules, new_modules = dict(reference.named_modules()), dict(result.model.named_modules())
    shrunk = 0
    for name in values:
        old, new = old_modules[name], new_modules[name]
        heads = old_modules[name.rsplit(".", 1)[0]].num_heads
        dim, kept_dim = old.out_features // heads, new.out_features // heads
        assert new.out_features == heads * kept_dim and 1 <= kept_dim <= dim
        w_old, w_new = old.weight.float(), new.weight
        kept = [[next(d for d in range(dim) if torch.equal(w_old[h * dim + d], w_new[h * kept_dim + j]))
                 for j in range(kept_dim)] for h in range(heads)]
        assert kept == [kept[0]] * heads, f"{name}: every head keeps the same dimensions"
        shrunk += kept_dim < dim
        with torch.no_grad():
            for h in range(heads):
                rows = [h * dim + d for d in range(dim) if d not in kept[0]]
                old.weight[rows] = 0
                if old.bias is not None:
                    old.bias[rows] = 0
    assert shrunk
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(result.model).double()(x.double()), reference(x.double()),
                                   rtol=1e-9, atol=1e-9)
