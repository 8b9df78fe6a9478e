"""Every text-encoder speed option leaves every trainer's model unchanged: same training losses,
same gradients of the learnable tensors, same evaluation logits as the reference path, in fp32,
on the tiny CLIP and (some trainers and options) on a tiny open_clip model with LayerScale.

Options (TRAINER.TEXT_ENCODER.*) against their reference: TRUNCATE True vs False (77 tokens),
SHARE_PREFIX True vs False (alone, and with truncation, chunks, checkpointing and fused
attention), ATTENTION fused vs math, CHUNK_SIZE 3 vs 0, CHECKPOINT True vs False, all five
together, and cached vs per-batch evaluation. Each trainer is built by `trainers.build_trainer`
for given class names from a config made by `trainers.make_cfg`, on the tiny CLIP; the losses
are the model's own `losses`, the evaluation logits the trainer's `model_inference`. The
prompts put their context before, after and around the class name (CoOp's three class-token
positions and class-specific context, MoCoOp templates such as "{} texture." and
"a photo of a {}, a type of flower.", ProGrad's fixed word between the context and the class
name), with class names of different BPE lengths.
"""

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.caching import CachedTextFeatures

PETS = "configs/datasets/oxford_pets.yaml"
COOP = "configs/trainers/CoOp/vit_b16_ep50.yaml"
MOCOOP = "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml"
# Experts with context after ("{} texture."), around and before the class name; two of them
# share a prefix length with different tails, "a {} in a video game." is a hard prompt only.
MIXED_TEMPLATES = [
    "{} texture.",
    "a {} in a video game.",
    "a photo of a {}, a type of flower.",
    "a photo of a {}.",
    "itap of a {}.",
]
CONFIGS = {  # name -> (trainer, trainer config, opts)
    "ZeroshotCLIP": ("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/vit_b16_ensemble.yaml", []),
    "CoOp": ("CoOp", COOP, []),
    "CoOp-middle": ("CoOp", COOP, ["TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"]),
    "CoOp-front": ("CoOp", COOP, ["TRAINER.COOP.CLASS_TOKEN_POSITION", "front"]),
    "CoOp-csc": ("CoOp", COOP, ["TRAINER.COOP.CSC", "True", "TRAINER.COOP.N_CTX", "4"]),
    "KgCoOp": ("KgCoOp", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", []),
    "CoCoOp": ("CoCoOp", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", []),
    "MoCoOp-paper": ("MoCoOp", MOCOOP, []),
    "MoCoOp-release": ("MoCoOp", "configs/trainers/MoCoOp/release_vit_b16_ep25.yaml", []),
    "MoCoOp-mixed": (
        "MoCoOp",
        MOCOOP,
        [
            "DATASET.PROMPTS.EXPERT_GROUPS",
            "[2, 1, 1, 1]",
            "DATASET.PROMPTS.EXPERT_TEMPLATES",
            str(MIXED_TEMPLATES),
        ],
    ),
    "MoPD": ("MoPD", "configs/trainers/MoPD/vit_b16_c4_bs128/oxford_pets.yaml", []),
    # Noise off: every run's L_TT sees the same hand-crafted features.
    "LASP-release": (
        "LASP",
        "configs/trainers/LASP/release_vit_b16.yaml",
        ["TRAINER.LASP.NOISE_PROB", "0.0"],
    ),
    "LASP-paper": ("LASP", "configs/trainers/LASP/paper_vit_b16_ep10_batch1.yaml", []),
    "ProGrad": ("ProGrad", "configs/trainers/ProGrad/vit_b16_ep50.yaml", []),
    # Deep text tokens in both blocks of the tiny CLIP; MaPLe's 2 tokens leave "of a" as text
    # after them, PromptSRC's frozen features use 60 templates through the same encoder.
    "IVLP": (
        "IVLP",
        "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
        ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2"],
    ),
    "MaPLe": (
        "MaPLe",
        "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        ["TRAINER.MAPLE.PROMPT_DEPTH", "2"],
    ),
    "PromptSRC": (
        "PromptSRC",
        "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"],
    ),
    # N = 3 prompts of 4 vectors around the class name, the global logit on.
    "PLOT": (
        "PLOT",
        "configs/trainers/PLOT/rn50.yaml",
        [
            "TRAINER.PLOT.N",
            "3",
            "TRAINER.PLOT.N_CTX",
            "4",
            "TRAINER.PLOT.CLASS_TOKEN_POSITION",
            "middle",
            "TRAINER.PLOT.GLOBAL_LOGITS",
            "True",
        ],
    ),
}
# Names of different BPE lengths, so truncation and chunks cut at different positions.
CLASSES = ["abyssinian", "Annual Crop Land", "globe_thistle", "dog", "school bus"]
VIRTUAL = ["bengal", "great pyrenees mountain dog"]  # MoCoOp's extra text classes
REFERENCE = {
    "TRUNCATE": "False",
    "SHARE_PREFIX": "False",
    "ATTENTION": "math",
    "CHUNK_SIZE": "0",
    "CHECKPOINT": "False",
}
SHARE = {"SHARE_PREFIX": "True"}
OPTIONS = {
    "truncate": {"TRUNCATE": "True"},
    "share_prefix": SHARE,
    "share_prefix+truncate": {**SHARE, "TRUNCATE": "True"},
    "share_prefix+fused": {**SHARE, "ATTENTION": "fused"},
    "share_prefix+chunk": {**SHARE, "TRUNCATE": "True", "CHUNK_SIZE": "3"},
    "share_prefix+checkpoint": {**SHARE, "CHECKPOINT": "True"},
    "fused": {"ATTENTION": "fused"},
    "chunk": {"CHUNK_SIZE": "3"},
    "checkpoint": {"CHECKPOINT": "True"},
    "all": {**SHARE, "TRUNCATE": "True", "ATTENTION": "fused", "CHUNK_SIZE": "3", "CHECKPOINT": "True"},
}
# fp32 rounding differs between sequence lengths, kernels, chunk shapes and packings: every
# loss, logit, gradient and frozen feature agrees within 1e-5 of its tensor's largest value.
RTOL = 1e-5
# A loss term is computed from O(1) log-probabilities, whose fp32 rounding (~1e-7 each) bounds its
# absolute accuracy however small the term is: the paper preset's router KL between two nearly
# equal distributions is ~5e-3, where 1e-5 relative would ask for 5e-8.
LOSS_FLOOR = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(name, backbone=(), **encoder):
    trainer, config, extra = CONFIGS[name]
    opts = [*backbone, "INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32", *extra]
    for key, value in {**REFERENCE, **encoder}.items():
        opts += [f"TRAINER.TEXT_ENCODER.{key}", value]
    return trainers.make_cfg(trainer, PETS, config, opts)


def build(cfg, clip_model):
    """The trainer for CLASSES (VIRTUAL: the dataset's other classes), speed options from the config."""
    torch.manual_seed(0)  # the same initial learnable tensors for every option
    return trainers.build_trainer(cfg, CLASSES, CLASSES + VIRTUAL, clip_model=clip_model)


def evaluation_logits(trainer, image):
    """Logits as `PromptTrainer.test` computes them: text features cached where the model caches."""
    trainer.set_model_mode("eval")
    with torch.no_grad():
        if isinstance(trainer.model, CachedTextFeatures):
            with trainer.model.cached_text_features():
                return trainer.model_inference(image)
        return trainer.model_inference(image)


def assert_relative(actual, expected, what, floor=0.0):
    """max |actual - expected| <= RTOL * max |expected| + floor: relative to the tensor's scale, so
    that entries near zero are held to the same absolute accuracy as the rest."""
    error, scale = (actual - expected).abs().max(), expected.abs().max()
    assert actual.shape == expected.shape and error <= RTOL * scale + floor, (
        f"{what}: largest difference {error:.3g} > {RTOL} x {scale:.3g} + {floor}"
    )


def run(cfg, clip_model):
    trainer = build(cfg, clip_model)
    model = trainer.model
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(3, 3, 32, 32, generator=gen)
    label = torch.tensor([0, 3, 4])
    trainer.set_model_mode("train")
    losses = model.losses(image, label)[0]
    total = sum(losses.values())
    if total.requires_grad:  # not for ZeroshotCLIP, which learns nothing
        total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "grads": grads,
        "buffers": buffers,
        "eval": evaluation_logits(trainer, image),
    }


@pytest.fixture(scope="module")
def reference(tiny_clip):
    """The reference-path run of each trainer, computed once."""
    runs = {}

    def get(name):
        if name not in runs:
            runs[name] = run(make_cfg(name), tiny_clip)
        return runs[name]

    return get


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_option_matches_reference_path(name, option, tiny_clip, reference):
    ref = reference(name)
    fast = run(make_cfg(name, **OPTIONS[option]), tiny_clip)

    assert fast["losses"].keys() == ref["losses"].keys()
    for term, value in ref["losses"].items():
        assert_relative(fast["losses"][term], value, term, floor=LOSS_FLOOR)
    assert fast["grads"].keys() == ref["grads"].keys()
    assert bool(ref["grads"]) == (name != "ZeroshotCLIP")
    for tensor, grad in ref["grads"].items():
        assert grad.abs().sum() > 0, f"{tensor} gets no gradient: the comparison would be empty"
        assert_relative(fast["grads"][tensor], grad, f"gradient of {tensor}")
    # Frozen features computed with the same encoder (hard prompts, teachers, prototypes).
    assert fast["buffers"].keys() == ref["buffers"].keys()
    for buffer, value in ref["buffers"].items():
        assert_relative(fast["buffers"][buffer], value, buffer)
    assert_relative(fast["eval"], ref["eval"], "evaluation logits")


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in ("CoCoOp", "ZeroshotCLIP")])
def test_cached_evaluation_matches_per_batch_encoding(name, tiny_clip):
    """With every speed option on (the contract test covers the defaults)."""
    trainer = build(make_cfg(name, **OPTIONS["all"]), tiny_clip)
    trainer.set_model_mode("eval")
    model = trainer.model
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # a trained-looking model, not the initial one
        image = torch.randn(4, 3, 32, 32)
        per_batch = trainer.model_inference(image)
        with model.cached_text_features():
            cached = trainer.model_inference(image)
            cached_again = trainer.model_inference(image)
    assert_relative(cached, per_batch, "cached evaluation logits")
    torch.testing.assert_close(cached_again, cached, atol=0, rtol=0)
    assert model._text_cache is None


# On open_clip's tiny model with LayerScale (tests/open_clip_models.py): the trainers whose prompts
# put context before, around and after the class name, per image and per class, with the options
# together and the shared prefix alone.
OPEN_CLIP = [
    (name, option)
    for name in ("CoOp-middle", "CoOp-csc", "CoCoOp", "MoCoOp-mixed", "MoPD")
    for option in ("share_prefix+truncate", "all")
]


@pytest.fixture(scope="module")
def open_clip_reference(tiny_open_clip):
    spec, model = tiny_open_clip("layerscale")
    runs = {}

    def get(name):
        if name not in runs:
            runs[name] = run(make_cfg(name, spec.opts()), model)
        return runs[name]

    return get


@pytest.mark.parametrize(("name", "option"), OPEN_CLIP)
def test_option_matches_reference_path_on_open_clip(name, option, tiny_open_clip, open_clip_reference):
    spec, model = tiny_open_clip("layerscale")
    ref = open_clip_reference(name)
    fast = run(make_cfg(name, spec.opts(), **OPTIONS[option]), model)
    for term, value in ref["losses"].items():
        assert_relative(fast["losses"][term], value, term, floor=LOSS_FLOOR)
    assert ref["grads"]
    for tensor, grad in ref["grads"].items():
        assert grad.abs().sum() > 0, f"{tensor} gets no gradient: the comparison would be empty"
        assert_relative(fast["grads"][tensor], grad, f"gradient of {tensor}")
    for buffer, value in ref["buffers"].items():
        assert_relative(fast["buffers"][buffer], value, buffer)
    assert_relative(fast["eval"], ref["eval"], "evaluation logits")
