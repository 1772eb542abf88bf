"""timm attention blocks that reshape with ``C // num_heads``: the forward that reads ``head_dim`` computes what
timm's does (both paths, float64), lets CaiT lose head dimensions exactly (against a masked float64 reference),
exports with parity and survives save/load."""

import copy

import pytest
import timm
import torch
import torch.nn as nn

from pfgdf_plugin import export_onnx, prune
from pfgdf_plugin.models.head_dim_forwards import (
    FORWARDS,
    MARK,
    adopt_head_dim_forward,
    adopt_head_dim_forwards,
    adopt_marked,
    base_class,
)
from pfgdf_plugin.models.saved import load_pruned, save_pruned
from tests.test_attention import _kept_dims

# One small model per registered class, with an input size it accepts.
_MODELS = {
    ("timm.models.cait", "TalkingHeadAttn"): ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "depth": 1}, 32),
    ("timm.models.volo", "Attention"): ("volo_d1_224", {"img_size": 64}, 64),
    ("timm.models.davit", "WindowAttention"): ("davit_tiny", {"depths": (1, 1, 1, 1)}, 224),
    ("timm.models.convit", "MHSA"): ("convit_tiny", {"img_size": 32, "patch_size": 8, "depth": 2,
                                                     "local_up_to_layer": 1}, 32),
    ("timm.models.twins", "LocallyGroupedAttn"): ("twins_svt_small", {"depths": (2, 2, 2, 2)}, 64),
    ("timm.models.vision_transformer_relpos", "RelPosAttention"): (
        "vit_srelpos_small_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}, 32),
    ("timm.models.twins", "GlobalSubSampleAttn"): ("twins_svt_small", {"depths": (2, 2, 2, 2)}, 64),
    ("timm.models.pvt_v2", "Attention"): ("pvt_v2_b0", {}, 64),
    ("timm.models.convit", "GPSA"): ("convit_tiny", {"img_size": 32, "patch_size": 8, "depth": 2,
                                                     "local_up_to_layer": 1}, 32),
}


# Variants of a class's forward that the models above do not take: PVT-v2's "linear" sub-sampling (pool + act).
_CASES = [(key, *spec) for key, spec in sorted(_MODELS.items())] + [
    (("timm.models.pvt_v2", "Attention"), "pvt_v2_b0", {"linear": True}, 64),
]


def test_every_registered_class_has_a_model_here():
    assert set(_MODELS) == set(FORWARDS)


_IDS = [f"{name}.{key[1]}" + ("-linear" if kw.get("linear") else "") for key, name, kw, _ in _CASES]


@pytest.mark.parametrize(("key", "name", "kwargs", "size"), _CASES, ids=_IDS)
def test_the_head_dim_forward_computes_what_timms_does(key, name, kwargs, size):
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=5, **kwargs).eval().double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    blocks = [m for m in net.modules() if (type(m).__module__, type(m).__qualname__) == key]
    assert blocks, f"{name} has no {key[1]}"
    fused = [m for m in net.modules() if hasattr(m, "fused_attn")]
    with torch.no_grad():
        expected = []
        for flag in (True, False):
            for m in fused:
                m.fused_attn = flag
            expected.append(net(x))
        assert adopt_head_dim_forwards(net) >= len(blocks)
        for block in blocks:
            assert type(block).__name__ == f"{key[1]}ByHeadDim" and base_class(block) is type(block).__bases__[0]
            assert getattr(block, MARK) is True
        for flag, want in zip((True, False), expected, strict=True):
            for m in fused:
                m.fused_attn = flag
            torch.testing.assert_close(net(x), want, rtol=1e-12, atol=1e-12)


def test_adoption_is_idempotent_and_refuses_other_classes():
    block = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, depth=1).blocks[0].attn
    assert adopt_head_dim_forward(block) and adopt_head_dim_forward(block)
    assert type(block).__bases__[0] is timm.models.cait.TalkingHeadAttn  # not a subclass of the subclass
    assert not adopt_head_dim_forward(nn.Linear(2, 2))
    plain = nn.Sequential(nn.Linear(2, 2))
    setattr(plain[0], MARK, True)
    with pytest.raises(ValueError, match="'0' .*Linear.* cannot give that class"):
        adopt_marked(plain)


def _cait() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "cait_xxs24_224", num_classes=10, img_size=32, patch_size=8, depth=2, init_values=1.0  # attention counts
    ).eval()


def test_cait_loses_head_dimensions_exactly(tmp_path):
    # Only the qkv groups: the pruned CaiT must equal the unpruned one (float64) with the removed q, k and v rows
    # zeroed. Talking heads mix the heads' logits (proj_l, proj_w), never the dimensions, so this is exact.
    net = _cait()
    others = [m for n, m in net.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith("attn.qkv")]
    x = torch.randn(2, 3, 32, 32)
    result = prune(net, x, alpha=1.0, ignored_layers=others)
    pruned = result.model
    assert result.extra["attention_heads"] == {}
    assert set(result.extra["attention_head_dims"]) == {f"blocks.{i}.attn" for i in range(2)}
    reference = _cait().double()
    for block, old, new in zip(net.blocks, reference.blocks, pruned.blocks, strict=True):
        attn = new.attn
        dim = attn.head_dim
        assert type(attn).__name__ == "TalkingHeadAttnByHeadDim" and attn.num_heads == 4 and 1 <= dim < 48
        assert attn.qkv.out_features == 12 * dim and attn.proj.in_features == 4 * dim
        kept = _kept_dims(block.attn.qkv.weight, attn.qkv.weight, 2, heads=4, dim=48)
        assert kept == [kept[0]] * 4, "every head keeps the same dimensions"
        removed = [h * 48 + d for h in range(4) for d in range(48) if d not in kept[0]]
        with torch.no_grad():
            for part in range(3):
                rows = [part * 192 + r for r in removed]
                old.attn.qkv.weight[rows] = 0
                old.attn.qkv.bias[rows] = 0
    with torch.no_grad():
        expected = reference(x.double())
        got = copy.deepcopy(pruned).double()(x.double())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # the q rescale is rounded once in float32
    assert (expected - _cait().double()(x.double())).abs().max() > 1e-3, "the masked reference must differ"

    assert export_onnx(pruned, tmp_path / "cait.onnx", (3, 32, 32)).parity.relative_error <= 1e-4
    loaded = load_pruned(save_pruned(pruned, tmp_path / "cait.pt"), model=_cait())
    assert type(loaded.blocks[0].attn).__name__ == "TalkingHeadAttnByHeadDim"
    assert loaded.blocks[0].attn.head_dim == pruned.blocks[0].attn.head_dim
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned.eval()(x))
