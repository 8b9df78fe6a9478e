"""CoCoOp: batched image-conditioned prompts, learnable tensors, base-to-new end to end."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.clip_loading import clip
from clipprompt.methods import cocoop
from clipprompt.text_encoder import TextEncoder
from tests.e2e import read_log

CLASSES = ["abyssinian", "school bus", "globe_thistle", "Annual Crop Land", "dog"]
PETS = "configs/datasets/oxford_pets.yaml"
LEARNABLE = [
    "prompt_learner.ctx",
    "prompt_learner.meta_net.0.weight",
    "prompt_learner.meta_net.0.bias",
    "prompt_learner.meta_net.2.weight",
    "prompt_learner.meta_net.2.bias",
]


def build(clip_model, chunk_size=0, reduction=16):
    """CoCoOp's model as its configs build it: 4 context vectors from "a photo of a"."""
    prompt = cocoop.ConditionalPrompt(CLASSES, clip_model, 4, "a photo of a", reduction)
    return cocoop.ConditionalCLIP(clip_model, prompt, TextEncoder(clip_model, chunk_size=chunk_size))


def reference_logits(model, clip_model, image):
    """One image at a time through CLIP's own text transformer on full 77-token prompts."""
    n_ctx = model.prompt_learner.ctx.shape[0]
    ids = clip.tokenize([" ".join(["x"] * n_ctx) + f" {c.replace('_', ' ')}." for c in CLASSES])
    rows = []
    for single in image:
        feature = F.normalize(clip_model.encode_image(single[None]), dim=-1)[0]
        ctx = model.prompt_learner.ctx + model.prompt_learner.meta_net(feature)
        x = clip_model.token_embedding(ids).clone()
        x[:, 1 : 1 + n_ctx] = ctx
        x = x + clip_model.positional_embedding
        x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        text = (
            clip_model.ln_final(x)[torch.arange(len(CLASSES)), ids.argmax(dim=-1)]
            @ clip_model.text_projection
        )
        rows.append(clip_model.logit_scale.exp() * F.normalize(text, dim=-1) @ feature)
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_batched_forward_equals_per_image_loop(tiny_clip, chunk_size):
    model = build(tiny_clip, chunk_size)
    image = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        batched = model(image)
        looped = []
        for single in image:
            feature = model.encode_image(single[None])
            prompts = model.prompt_learner.assembler(
                model.prompt_learner.ctx + model.prompt_learner.meta_net(feature)
            )
            text = F.normalize(model.text_encoder(*prompts), dim=-1)
            looped.append(model.logit_scale.exp() * text @ feature[0])
        reference = reference_logits(model, tiny_clip, image)
    assert batched.shape == (4, len(CLASSES))
    torch.testing.assert_close(batched, torch.stack(looped), atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, reference, atol=1e-4, rtol=0)


def test_prompts_depend_on_the_image(tiny_clip):
    model = build(tiny_clip)
    with torch.no_grad():
        features = model.text_features(model.encode_image(torch.randn(2, 3, 32, 32)))
    assert features.shape == (2, len(CLASSES), tiny_clip.text_projection.shape[1])
    assert not torch.allclose(features[0], features[1])


def test_context_starts_from_the_init_words_and_meta_net_shape(tiny_clip):
    model = build(tiny_clip)
    ids = clip.tokenize("a photo of a")[0, 1:5]
    torch.testing.assert_close(model.prompt_learner.ctx.detach(), tiny_clip.token_embedding.weight[ids])
    first, last = model.prompt_learner.meta_net[0], model.prompt_learner.meta_net[2]
    image_dim, text_dim = tiny_clip.visual.output_dim, tiny_clip.token_embedding.weight.shape[1]
    assert (first.in_features, first.out_features) == (image_dim, image_dim // 16)
    assert (last.in_features, last.out_features) == (image_dim // 16, text_dim)


def test_bad_meta_net_reduction_is_rejected(tiny_clip):
    with pytest.raises(ValueError, match="META_NET_REDUCTION"):
        build(tiny_clip, reduction=0)


def test_gradients_reach_only_context_and_meta_net(tiny_clip):
    model = build(tiny_clip)
    logits = model(torch.randn(3, 3, 32, 32))
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad == LEARNABLE
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in LEARNABLE)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == LEARNABLE


@pytest.mark.parametrize(
    "name, batch, lr",
    [("vit_b16_c4_ep10_batch1_ctxv1", 1, 0.002), ("vit_b16_c4_ep10_batch8_ctxv1", 8, 0.016)],
)
def test_configs(name, batch, lr):
    cfg = trainers.make_cfg("CoCoOp", PETS, f"configs/trainers/CoCoOp/{name}.yaml")
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH) == (batch, lr, 10)
    assert (cfg.TRAINER.COCOOP.N_CTX, cfg.TRAINER.COCOOP.CTX_INIT) == (4, "a photo of a")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_CONS_LR, cfg.TRAINER.PREC) == (1, 1e-5, "fp16")


@pytest.mark.e2e
def test_training_run_learns_context_and_meta_net_only(base_run):
    log = read_log(base_run("CoCoOp"))
    assert f"Learnable tensors (514 values): {', '.join(LEARNABLE)}\n" in log  # CLIP stays frozen
