"""Per-layer prompt hooks in both frozen towers and the image tower's local features
(clipprompt.towers, clipprompt.text_encoder), against CLIP's own forward passes.

The references run CLIP's modules as CLIP runs them (its `encode_text` blocks with their causal
mask, its `VisionTransformer.forward` with forward pre-hooks that insert the prompts), so they
share no code with the hooks under test.
"""

import math

import pytest
import torch

from clipprompt.clip_loading import build_tiny_clip
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm
from clipprompt.text_encoder import TextEncoder
from clipprompt.towers import DeepTextPrompts, encode_image

CLASSES = ["dog", "great pyrenees mountain dog", "school bus", "x"]
N_CTX = 4
DEPTH = 2  # deep text tokens before blocks 1 and 2 of a 3-block text tower


@pytest.fixture(scope="module")
def clip3():
    """A tiny ViT CLIP with 3 text and 3 image blocks (deep prompts at two of them)."""
    return build_tiny_clip(transformer_layers=3, vision_layers=3, seed=3)


@pytest.fixture(scope="module")
def resnet_clip():
    return build_tiny_clip(vision_layers=(1, 1, 1, 1), vision_width=64, image_resolution=64, seed=4)


def images(resolution, n=3, seed=0):
    return torch.randn(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- image tower


def test_without_hooks_the_image_tower_is_clips(clip3, resnet_clip):
    for model in (clip3, resnet_clip):
        x = images(model.visual.input_resolution)
        with torch.no_grad():
            assert torch.equal(encode_image(model.visual, x).features, model.visual(x))
            assert encode_image(model.visual, x).local is None
            with_local = encode_image(model.visual, x, local=True).features
        torch.testing.assert_close(with_local, model.visual(x), atol=1e-6, rtol=1e-6)


def clip_forward_with_prompts(visual, x, prompts):
    """CLIP's own `VisionTransformer.forward` with the prompts put in by forward pre-hooks:
    appended to `ln_pre`'s input, then the last n tokens replaced before blocks 1 .. J-1."""
    n = prompts.shape[1]
    hooks = [
        visual.ln_pre.register_forward_pre_hook(
            lambda m, a: (torch.cat([a[0], prompts[0].expand(a[0].shape[0], n, -1)], 1),)
        )
    ]
    for index, block in enumerate(visual.transformer.resblocks):
        if 1 <= index < prompts.shape[0]:

            def replace(module, args, p=prompts[index]):
                (seq,) = args  # [L, B, w]
                return (torch.cat([seq[:-n], p[:, None].expand(-1, seq.shape[1], -1)]),)

            hooks.append(block.register_forward_pre_hook(replace))
    try:
        return visual(x)
    finally:
        for hook in hooks:
            hook.remove()


def test_vit_prompts_per_layer_equal_clips_forward_with_them_inserted(clip3):
    visual, x = clip3.visual, images(32)
    prompts = (0.1 * torch.randn(DEPTH, 2, 64, generator=torch.Generator().manual_seed(1))).requires_grad_()
    ours = encode_image(visual, x, prompts).features
    reference = clip_forward_with_prompts(visual, x, prompts)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    (grad,) = torch.autograd.grad(ours.pow(2).sum(), prompts)
    (ref_grad,) = torch.autograd.grad(reference.pow(2).sum(), prompts)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
    assert (grad[1].abs().sum() > 0) and (grad[0].abs().sum() > 0)  # every layer's tokens learn
    with torch.no_grad():
        assert not torch.allclose(ours, visual(x), atol=1e-4)  # the prompts change the features


def test_deep_prompts_need_a_vit(resnet_clip):
    with pytest.raises(ValueError, match="per-layer image prompts need a ViT image tower"):
        encode_image(resnet_clip.visual, images(64), torch.zeros(1, 2, 64))


def test_vit_local_features_are_the_projected_patch_tokens(clip3):
    visual, x = clip3.visual, images(32)
    seen = {}
    hook = visual.transformer.register_forward_hook(lambda m, a, out: seen.update(out=out))
    with torch.no_grad():
        out = encode_image(visual, x, local=True)
        visual(x)
    hook.remove()
    tokens = seen["out"].permute(1, 0, 2)  # [B, 1 + patches, w]
    reference = torch.stack(
        [visual.ln_post(tokens[:, i]) @ visual.proj for i in range(1, tokens.shape[1])], 1
    )
    assert out.local.shape == (3, (32 // 8) ** 2, 32)
    torch.testing.assert_close(out.local, reference, atol=1e-6, rtol=1e-5)


def test_resnet_local_features_are_the_attention_pool_at_every_position(resnet_clip):
    visual, x = resnet_clip.visual, images(64)
    pool = visual.attnpool
    seen = {}
    hook = pool.register_forward_pre_hook(lambda m, a: seen.update(maps=a[0]))
    with torch.no_grad():
        out = encode_image(visual, x, local=True)
        visual(x)
    hook.remove()
    # Single-query attention, one position at a time, head by head.
    seq = seen["maps"].flatten(2).permute(0, 2, 1)  # [B, HW, C]
    seq = torch.cat([seq.mean(1, keepdim=True), seq], 1) + pool.positional_embedding
    heads, dim = pool.num_heads, seq.shape[-1] // pool.num_heads
    q, k, v = pool.q_proj(seq), pool.k_proj(seq), pool.v_proj(seq)
    expected = []
    for i in range(seq.shape[1]):
        per_head = []
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            weights = (k[:, :, cols] @ q[:, i, cols, None] / math.sqrt(dim)).squeeze(-1).softmax(-1)
            per_head.append((weights[:, :, None] * v[:, :, cols]).sum(1))
        expected.append(pool.c_proj(torch.cat(per_head, -1)))
    expected = torch.stack(expected, 1)
    torch.testing.assert_close(out.features, expected[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.local, expected[:, 1:], atol=1e-5, rtol=1e-4)
    assert out.local.shape == (3, (64 // 32) ** 2, 32)


# ---------------------------------------------------------------- text tower


def clip_text_reference(model, embeddings, eot, deep):
    """Prompt embeddings `[N, 77, w]` through CLIP's own text blocks (their causal mask), with
    the deep tokens written into the residual stream before each of the next blocks."""
    x = (embeddings + model.positional_embedding).permute(1, 0, 2)  # [77, N, w]
    for index, block in enumerate(model.transformer.resblocks):
        tokens = deep.at_block(index)
        if tokens is not None:
            x = x.clone()
            x[deep.positions] = tokens[:, None].expand(-1, x.shape[1], -1)
        x = block(x)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), eot] @ model.text_projection


def deep_prompts(width, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(DEPTH, N_CTX, width, generator=g)).requires_grad_()


SPEED_OPTIONS = [
    {},  # truncated, shared prefix, fused attention
    {"attention": "math"},
    {"chunk_size": 2},
    {"checkpointing": True, "chunk_size": 3},
    {"share_prefix": False},
    {"share_prefix": False, "chunk_size": 2, "attention": "math"},
]


@pytest.mark.parametrize(
    "options", SPEED_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_deep_text_prompts_keep_every_speed_option_exact(clip3, options):
    """Each speed option with deep tokens equals the 77-token reference path (forward and the
    gradients of the context and of every layer's tokens), and that path equals CLIP's blocks."""
    forms = [PromptForm.coop(N_CTX, "a photo of a"), PromptForm.from_template("itap of a {}.")]
    results = {}
    for name, opts, truncate in (
        ("reference", {"share_prefix": False}, False),
        ("option", options, True),
    ):
        assembler = PromptAssembler(forms, CLASSES, clip3.token_embedding, truncate=truncate)
        table = assembler.init_table(generator=torch.Generator().manual_seed(0)).requires_grad_()
        deep = DeepTextPrompts(deep_prompts(64), torch.arange(1, N_CTX + 1))
        feats = TextEncoder(clip3, truncate=truncate, **opts)(*assembler(table), deep=deep)
        grads = torch.autograd.grad(feats.pow(2).sum(), (table, deep.tokens))
        results[name] = (feats, *grads)
        if name == "reference":
            embeds, eot, _ = assembler(table)
            with torch.no_grad():
                clip_features = clip_text_reference(clip3, embeds, eot, deep)
            torch.testing.assert_close(feats, clip_features, atol=1e-5, rtol=1e-5)
    for ours, reference in zip(results["option"], results["reference"]):
        scale = float(reference.detach().abs().max())  # 1e-5 of each tensor's scale
        torch.testing.assert_close(ours, reference, atol=1e-5 * scale, rtol=1e-5)
    assert results["option"][2][1].abs().sum() > 0  # the deepest tokens learn too


def test_deep_text_prompts_change_the_features_only_through_their_blocks(clip3):
    assembler = PromptAssembler([PromptForm.coop(N_CTX, "a photo of a")], CLASSES, clip3.token_embedding)
    table = assembler.init_table()
    encoder = TextEncoder(clip3)
    tokens = deep_prompts(64).detach()
    with torch.no_grad():
        plain = encoder(*assembler(table))
        deep = encoder(*assembler(table), deep=DeepTextPrompts(tokens, torch.arange(1, N_CTX + 1)))
        # Tokens for blocks beyond the tower are never used.
        beyond = DeepTextPrompts(torch.cat([tokens, torch.randn(5, N_CTX, 64)]), torch.arange(1, N_CTX + 1))
        too_deep = encoder(*assembler(table), deep=beyond)
    assert not torch.allclose(plain, deep, atol=1e-4)
    assert torch.equal(deep, too_deep)
