"""The ViT: sizes and shapes, its residual additions are skips (so every kind, factory and
patch_skips work on it), and every skip kind x residual mode trains forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from orthogonal_skip_connections import get_model, patch_skips, skip, skip_diagnostics
from orthogonal_skip_connections.models import ViT
from orthogonal_skip_connections.skips import SKIP_KINDS, IdentitySkip, Residual, iter_skips

MODES = [("add", "channel"), ("orthogonal_update", "channel"), ("orthogonal_update", "global"),
         ("rotation", "channel")]
KINDS = list(SKIP_KINDS) + ["learnable_orth:cayley"]
DIGITS = dict(in_channels=1, image_size=8, patch_size=2)  # 8x8 images, 16 patch tokens


def kind_options(kind: str) -> tuple[str, dict]:
    if kind == "learnable_orth:cayley":
        return "learnable_orth", {"method": "cayley", "init": "haar"}
    return kind, ({"init": "haar"} if kind == "learnable_orth" else {})


def test_named_sizes_shapes_and_pooling():
    m = get_model("vit_tiny", 10)  # CIFAR defaults: 32x32, patch 4 -> 64 tokens + a class token
    assert (m.pos_embed.shape, len(m.blocks), m.blocks[0].attn.branch.heads) == ((1, 65, 192), 12, 3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    s = get_model("vit_small", 100, **DIGITS, pool="mean")
    assert (s.pos_embed.shape, len(s.blocks), s.blocks[0].attn.branch.heads) == ((1, 16, 384), 12, 6)
    assert s.cls_token is None and s(torch.randn(3, 1, 8, 8)).shape == (3, 100)
    assert get_model("vit_tiny", 10, **DIGITS, depth=2, width=64, heads=4, mlp_ratio=2.0).blocks[1].mlp.branch[0] \
        .out_features == 128
    # the usual sizes: timm's vit_tiny_patch16_224 has 5.7M parameters, ours the same blocks
    # with fewer positions and a smaller patch embedding
    n = sum(p.numel() for p in m.parameters())
    assert 5.3e6 < n < 5.7e6


def test_every_residual_addition_is_a_skip():
    m = get_model("vit_tiny", 10, "fixed_orth", **DIGITS, depth=3)
    holders = [mod for mod in m.modules() if hasattr(mod, "skip")]
    assert len(holders) == 6 and all(isinstance(h.residual, Residual) for h in holders)
    assert {r["kind"] for r in skip_diagnostics(m)} == {"fixed_orth"}
    patch_skips(m, "identity")
    assert all(isinstance(h.skip, IdentitySkip) for h in holders)
    # with identity skips and mode add, a sub-block is x + f(LN(x)) token by token
    x = torch.randn(2, 5, 192)
    sub = m.blocks[0].mlp
    torch.testing.assert_close(sub(x), x + sub.branch(sub.norm(x)), rtol=0, atol=0)
    # a factory: one matrix per residual addition, each (width x width)
    f = get_model("vit_tiny", 10, skip_layer=skip("learnable_orth", method="cayley"), **DIGITS, depth=2)
    assert [tuple(s.weight.shape) for _, s in iter_skips(f)] == [(192, 192)] * 4
    assert all(r["orth_error"] < 1e-5 for r in skip_diagnostics(f))


def test_attention_matches_a_plain_softmax_implementation():
    m = get_model("vit_tiny", 10, **DIGITS, depth=1, width=12, heads=3)
    attn = m.blocks[0].attn.branch
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / 4**0.5, dim=-1)
    expected = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_bad_configurations_are_one_line_errors():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        get_model("vit_tiny", 10, image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="not a multiple of heads"):
        get_model("vit_tiny", 10, width=100, heads=3)
    with pytest.raises(ValueError, match="unknown pool 'max'; allowed: cls, mean"):
        get_model("vit_tiny", 10, pool="max")
    with pytest.raises(ValueError, match="unknown model_type 'vit_huge'"):
        get_model("vit_huge", 10)
    with pytest.raises(ValueError, match=r"ViT expects images \(N, C, 8, 8\)"):
        get_model("vit_tiny", 10, **DIGITS, depth=1)(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"option\(s\) \['stem'\] apply to ResNet models only, not vit_tiny"):
        get_model("vit_tiny", 10, stem="cifar")
    with pytest.raises(ValueError, match="unknown skip option"):
        ViT(10, patch_sise=2)
    # through get_model a misspelt model option is named as such, the model's options listed
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['patch_sise'\] for vit_tiny; allowed: .*patch_size"):
        get_model("vit_tiny", 10, patch_sise=2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['in_chanels'\] for resnet20; allowed: in_channels.*"
                                         r"and the skip options method"):
        get_model("resnet20", 10, in_chanels=1)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 8, 8, generator=g), torch.tensor([3, 7])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,method", MODES)
def test_every_kind_and_mode_forward_backward_finite_gradients(batch, kind, mode, method):
    k, opts = kind_options(kind)
    # vit_tiny's width and heads (192, 3), 4 of its 12 blocks: every block is alike
    model = get_model("vit_tiny", 10, k, **DIGITS, depth=4, residual_mode=mode, orthogonal_method=method, **opts)
    x, y = batch
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
