"""Every text-encoder speed option leaves every trainer's model unchanged: same training losses,
same gradients of the learnable tensors, same evaluation logits as the reference path, in fp32.

Options (TRAINER.TEXT_ENCODER.*) against their reference: TRUNCATE True vs False (77 tokens),
ATTENTION fused vs math, CHUNK_SIZE 3 vs 0, CHECKPOINT True vs False, all four together, and
cached vs per-batch evaluation. Models are built as the trainers' `build_model` builds them,
from configs made by `train.setup_cfg`, on the tiny CLIP.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import train
from clipprompt import mixture
from clipprompt.caching import CachedTextFeatures
from clipprompt.distillation import mopd_losses
from clipprompt.knowledge import knowledge_guided_loss
from clipprompt.templates import fill
from clipprompt.text_encoder import encode_texts
from trainers import cocoop, coop, kgcoop, mopd
from trainers.mocoop import MixtureCLIP
from trainers.prompt_trainer import PromptTrainer

PETS = "configs/datasets/oxford_pets.yaml"
CONFIGS = {
    "CoOp": ("CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml"),
    "KgCoOp": ("KgCoOp", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"),
    "CoCoOp": ("CoCoOp", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"),
    "MoCoOp-paper": ("MoCoOp", "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml"),
    "MoCoOp-release": ("MoCoOp", "configs/trainers/MoCoOp/release_vit_b16_ep25.yaml"),
    "MoPD": ("MoPD", "configs/trainers/MoPD/vit_b16_c4_bs128/oxford_pets.yaml"),
}
# Names of different BPE lengths, so truncation and chunks cut at different positions.
CLASSES = ["abyssinian", "Annual Crop Land", "globe_thistle", "dog", "school bus"]
VIRTUAL = ["bengal", "great pyrenees mountain dog"]  # MoCoOp's extra text classes
REFERENCE = {"TRUNCATE": "False", "ATTENTION": "math", "CHUNK_SIZE": "0", "CHECKPOINT": "False"}
OPTIONS = {
    "truncate": {"TRUNCATE": "True"},
    "fused": {"ATTENTION": "fused"},
    "chunk": {"CHUNK_SIZE": "3"},
    "checkpoint": {"CHECKPOINT": "True"},
    "all": {"TRUNCATE": "True", "ATTENTION": "fused", "CHUNK_SIZE": "3", "CHECKPOINT": "True"},
}
# fp32 rounding differs between sequence lengths, kernels and chunk shapes (measured: at most
# ~2e-6 on losses and logits, ~3e-6 relative on gradients).
ATOL, RTOL = 1e-5, 1e-5
GRAD_RTOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(name, **encoder):
    trainer, config = CONFIGS[name]
    opts = []
    for key, value in {**REFERENCE, **encoder}.items():
        opts += [f"TRAINER.TEXT_ENCODER.{key}", value]
    args = [
        "--trainer",
        trainer,
        "--dataset-config-file",
        PETS,
        "--config-file",
        config,
        "TRAINER.PREC",
        "fp32",
        *opts,
    ]
    return train.setup_cfg(train.parse_args(args))


def build(name, cfg, clip_model):
    """The model as the trainer's build_model makes it (speed options from the config)."""
    torch.manual_seed(0)  # the same initial learnable tensors for every option
    encoder = PromptTrainer.build_text_encoder(SimpleNamespace(cfg=cfg), clip_model)
    embedding = clip_model.token_embedding
    if name == "CoOp":
        return coop.CustomCLIP(coop.PromptLearner(cfg, CLASSES, clip_model), encoder, clip_model)
    if name == "KgCoOp":
        hard = encode_texts(encoder, embedding, [fill(cfg.DATASET.PROMPTS.TEMPLATE, c) for c in CLASSES])
        learner = kgcoop.PromptLearner(cfg, CLASSES, clip_model)
        return kgcoop.KnowledgeGuidedCLIP(learner, encoder, clip_model, hard)
    if name == "CoCoOp":
        return cocoop.CustomCLIP(cocoop.PromptLearner(cfg, CLASSES, clip_model), encoder, clip_model)
    if name == "MoPD":
        templates = mopd.teacher_pool(cfg.TRAINER.MOPD.POOL, cfg.DATASET.PROMPTS.TEACHER_TEMPLATES)
        teachers = encode_texts(encoder, embedding, [fill(t, c) for t in templates for c in CLASSES])
        learner = mopd.PromptLearner(cfg, CLASSES, clip_model)
        return mopd.CustomCLIP(learner, encoder, clip_model, teachers.view(len(templates), len(CLASSES), -1))
    templates = list(cfg.DATASET.PROMPTS.EXPERT_TEMPLATES)
    groups = mixture.validate_groups(cfg.DATASET.PROMPTS.EXPERT_GROUPS, templates)
    return MixtureCLIP(cfg, groups, templates, CLASSES, CLASSES + VIRTUAL, clip_model, encoder)


def training_losses(name, cfg, model, image, label):
    """The loss terms of the trainer's forward_backward."""
    if name == "KgCoOp":
        text = model.compute_text_features()
        logits = model.classify(image, text)
        return {
            "loss_ce": F.cross_entropy(logits, label),
            "loss_kg": cfg.TRAINER.KGCOOP.W * knowledge_guided_loss(text, model.hard_features),
        }
    if name.startswith("MoCoOp"):
        return model.losses(image, label)[0]
    if name == "MoPD":
        opts = cfg.TRAINER.MOPD
        student, teachers, scores = model.forward_train(image)
        return mopd_losses(
            student,
            teachers,
            scores,
            label,
            opts.NUM_TEACHERS,
            opts.W,
            opts.W2,
            opts.DISTILL_TEMPERATURE,
            opts.TEACHER_COMBINE,
        )[0]
    return {"loss_ce": F.cross_entropy(model(image), label)}


def evaluation_logits(model, image):
    """Logits as `PromptTrainer.test` computes them: text features cached where the model caches."""
    model.eval()
    with torch.no_grad():
        if isinstance(model, CachedTextFeatures):
            with model.cached_text_features():
                return model(image)
        return model(image)


def run(name, cfg, clip_model):
    model = build(name, cfg, clip_model)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(3, 3, 32, 32, generator=gen)
    label = torch.tensor([0, 3, 4])
    model.train()
    losses = training_losses(name, cfg, model, image, label)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "grads": grads,
        "buffers": buffers,
        "eval": evaluation_logits(model, image),
    }


def clip_for(name, tiny_clip):
    # The release preset makes the image LayerNorms learnable in place: it gets a copy.
    return copy.deepcopy(tiny_clip) if name == "MoCoOp-release" else tiny_clip


@pytest.fixture(scope="module")
def reference(tiny_clip):
    """The reference-path run of each trainer, computed once."""
    runs = {}

    def get(name):
        if name not in runs:
            runs[name] = run(name, make_cfg(name), clip_for(name, tiny_clip))
        return runs[name]

    return get


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_option_matches_reference_path(name, option, tiny_clip, reference):
    ref = reference(name)
    fast = run(name, make_cfg(name, **OPTIONS[option]), clip_for(name, tiny_clip))

    assert fast["losses"].keys() == ref["losses"].keys()
    for term, value in ref["losses"].items():
        torch.testing.assert_close(fast["losses"][term], value, atol=ATOL, rtol=RTOL, msg=term)
    assert fast["grads"].keys() == ref["grads"].keys() and ref["grads"]
    for tensor, grad in ref["grads"].items():
        assert grad.abs().sum() > 0, f"{tensor} gets no gradient: the comparison would be empty"
        torch.testing.assert_close(fast["grads"][tensor], grad, atol=ATOL, rtol=GRAD_RTOL, msg=tensor)
    # Frozen features computed with the same encoder (hard prompts, teachers, prototypes).
    assert fast["buffers"].keys() == ref["buffers"].keys()
    for buffer, value in ref["buffers"].items():
        torch.testing.assert_close(fast["buffers"][buffer], value, atol=ATOL, rtol=RTOL, msg=buffer)
    torch.testing.assert_close(fast["eval"], ref["eval"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "CoCoOp"])
def test_cached_evaluation_matches_per_batch_encoding(name, tiny_clip):
    cfg = make_cfg(name, **OPTIONS["all"])
    model = build(name, cfg, clip_for(name, tiny_clip)).eval()
    assert isinstance(model, CachedTextFeatures)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # a trained-looking model, not the initial one
        image = torch.randn(4, 3, 32, 32)
        per_batch = model(image)
        with model.cached_text_features():
            cached = model(image)
            cached_again = model(image)
    torch.testing.assert_close(cached, per_batch, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(cached_again, cached, atol=0, rtol=0)
    assert model._text_cache is None


def test_cocoop_is_never_cached(tiny_clip):
    # Its class features depend on the image: caching them would be wrong, so it must not claim to.
    model = build("CoCoOp", make_cfg("CoCoOp"), tiny_clip)
    assert not isinstance(model, CachedTextFeatures)
