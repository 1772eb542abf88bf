"""Attention head pruning: whole heads leave q, k and v together, num_heads follows, the function is exact."""

import copy

import timm
import torch
import torch.nn as nn

from pfgdf_plugin import export_onnx, prune
from pfgdf_plugin.pruning.attention import find_heads, update_heads


def _vit(depth: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=depth).eval()


def test_find_heads_reads_timm_attention():
    vit = _vit()
    layouts = find_heads(vit)
    assert set(layouts) == {b.attn.qkv for b in vit.blocks}
    layout = layouts[vit.blocks[0].attn.qkv]
    assert (layout.parts, layout.num_heads, layout.head_dim, layout.channels) == (3, 3, 64, 576)
    assert find_heads(timm.create_model("resnet18")) == {}


def test_update_heads_rejects_a_cut_through_a_head():
    vit = _vit(depth=1)
    layouts = find_heads(vit)
    attn = vit.blocks[0].attn
    attn.qkv = nn.Linear(192, 575)  # not a whole number of heads any more
    layouts = {attn.qkv: next(iter(layouts.values())).__class__(attn, attn.qkv, 3, 3, 64)}
    try:
        update_heads(layouts)
    except RuntimeError as err:
        assert "not a whole number of heads" in str(err)
    else:
        raise AssertionError("a projection cut through a head must be refused")


def test_heads_pruned_equal_heads_masked_in_the_original():
    # Prune only the qkv groups; removing head h must equal zeroing its columns of the output projection
    # in the unpruned model (an independent, float64 reference of what dropping a head means).
    vit = _vit()
    others = [m for n, m in vit.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith("qkv")]
    x = torch.randn(2, 3, 32, 32)
    result = prune(vit, x, alpha=1.2, ignored_layers=others)
    pruned = result.model
    assert result.extra["attention_heads"], "alpha=1.2 should remove some heads"

    reference = _vit().double()
    for block, old, new in zip(vit.blocks, reference.blocks, pruned.blocks, strict=True):
        qkv_old, qkv_new = block.attn.qkv.weight, new.attn.qkv.weight
        kept = [h for h in range(3) if _head_kept(qkv_old, qkv_new, h)]
        assert new.attn.num_heads == len(kept) == qkv_new.shape[0] // 192
        assert new.attn.attn_dim == 64 * len(kept) and new.attn.proj.in_features == 64 * len(kept)
        # q, k and v keep the same heads: each third of the new weight is the same heads of the old one.
        for part in range(3):
            rows = torch.cat([qkv_old[part * 192 + h * 64: part * 192 + (h + 1) * 64] for h in kept])
            assert torch.equal(qkv_new[part * 64 * len(kept): (part + 1) * 64 * len(kept)], rows)
        with torch.no_grad():
            for h in set(range(3)) - set(kept):
                old.attn.proj.weight[:, h * 64:(h + 1) * 64] = 0
    with torch.no_grad():
        expected = reference(x.double())
        got = pruned.double()(x.double())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def _head_kept(old: torch.Tensor, new: torch.Tensor, h: int) -> bool:
    q_old = old[h * 64:(h + 1) * 64]
    heads_new = new.shape[0] // 192
    return any(torch.equal(new[j * 64:(j + 1) * 64], q_old) for j in range(heads_new))


def test_pruned_vit_runs_exports_and_meets_target(tmp_path):
    vit = _vit(depth=12)
    x = torch.randn(1, 3, 32, 32)
    result = prune(vit, x, target_macs=0.4)
    assert abs(result.macs_kept - 0.4) <= 0.01 and result.extra["attention_heads"]
    for block in result.model.blocks:
        assert block.attn.qkv.out_features == 3 * block.attn.num_heads * block.attn.head_dim
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
