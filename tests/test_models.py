"""Backbone loading and prompt insertion."""

import pytest
import timm
import torch

from rayfed_bpt.errors import ConfigError
from rayfed_bpt.models import PromptedViT, create_backbone
from rayfed_bpt.models.backbone import BUILTIN_NAME, BUILTIN_WEIGHTS


@pytest.fixture(scope="module")
def pv():
    return PromptedViT(create_backbone())


def test_builtin_is_frozen_and_small(pv):
    vit = pv.vit
    assert sum(p.numel() for p in vit.parameters()) < 1_000_000
    assert not any(p.requires_grad for p in vit.parameters())
    vit.train()
    assert not vit.training  # stays in eval mode


def test_builtin_equals_loading_the_file_through_timm(pv):
    other = create_backbone("file", BUILTIN_NAME, str(BUILTIN_WEIGHTS))
    for (k, a), (_, b) in zip(pv.vit.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    fresh = timm.create_model(BUILTIN_NAME, pretrained=False)  # random init differs
    assert not torch.equal(
        fresh.state_dict()["blocks.0.attn.qkv.weight"],
        pv.vit.state_dict()["blocks.0.attn.qkv.weight"],
    )


def test_backbone_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("file", BUILTIN_NAME, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="allowed: builtin, timm, file"):
        create_backbone("hub")
    with pytest.raises(ConfigError, match="needs backbone.name"):
        create_backbone("timm")


def test_zero_length_prompt_reproduces_the_plain_vit(pv):
    x = torch.randn(3, 3, 32, 32)
    plain = pv.vit.forward_head(pv.vit.forward_features(x), pre_logits=True)
    assert torch.allclose(pv(x), plain, atol=1e-6)
    assert torch.allclose(pv(x, torch.zeros(3, 0, pv.embed_dim)), plain, atol=1e-6)


def _block_inputs(pv, x, prompt):
    seen = []
    hooks = [
        b.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone())) for b in pv.vit.blocks
    ]
    out = pv(x, prompt)
    for h in hooks:
        h.remove()
    return out, seen


def test_shallow_prompt_sits_after_cls_at_block_zero(pv):
    x, L = torch.randn(2, 3, 32, 32), 5
    prompt = torch.randn(2, L, pv.embed_dim)
    out, seen = _block_inputs(pv, x, prompt)
    tokens = pv.tokens(x)
    assert out.shape == (2, pv.embed_dim)
    assert seen[0].shape == (2, 1 + L + 64, pv.embed_dim)
    assert torch.equal(seen[0][:, 1 : 1 + L], prompt)
    assert torch.equal(seen[0][:, :1], tokens[:, :1]) and torch.equal(
        seen[0][:, 1 + L :], tokens[:, 1:]
    )
    assert not torch.allclose(out, pv(x), atol=1e-4)  # the prompt changes the feature


def test_deep_prompt_replaces_tokens_at_every_block(pv):
    x, L = torch.randn(2, 3, 32, 32), 3
    prompt = torch.randn(2, pv.depth, L, pv.embed_dim)
    _, seen = _block_inputs(pv, x, prompt)
    assert len(seen) == pv.depth
    for i, h in enumerate(seen):
        assert h.shape[1] == 1 + L + 64
        assert torch.equal(h[:, 1 : 1 + L], prompt[:, i])
    with pytest.raises(ValueError, match="deep prompt has"):
        pv(x, torch.randn(2, pv.depth - 1, L, pv.embed_dim))


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_prompt_insertion_in_another_timm_vit(pool):
    """Any timm VisionTransformer, here without a class token and with each of timm's
    patch poolings: a zero-length prompt must read out exactly what timm does (avgmax
    is the mean of max and mean, not the max), and a prompt must not be pooled."""
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        class_token=False,
        global_pool=pool,
        num_classes=0,
    )
    pv = PromptedViT(vit.eval())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(pv(x), vit(x), atol=1e-5)
    prompt = torch.randn(2, 4, vit.embed_dim)
    assert pv(x, prompt).shape == (2, vit.embed_dim)
    # independent readout: run the blocks by hand, pool the 16 patch tokens only
    h = torch.cat([prompt, vit._pos_embed(vit.patch_embed(x))], 1)
    patches = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(h))))[:, 4:]
    want = {"avg": patches.mean(1), "max": patches.amax(1),
            "avgmax": 0.5 * (patches.mean(1) + patches.amax(1))}[pool]
    assert torch.allclose(pv(x, prompt), vit.fc_norm(want), atol=1e-5)
