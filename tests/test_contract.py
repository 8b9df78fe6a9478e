"""The contract every registered trainer keeps, tested the way timm tests every model.

Each trainer is built for given class names (`trainers.build_trainer`, no data loaders) on the
tiny CLIP and on a tiny open_clip model with LayerScale (every case), and on a SigLIP-style
open_clip model (bidirectional text tower, its own tokenizer, logit bias; some cases), and only
its own entry points are called: `forward_backward` trains exactly the
tensors it declares learnable (and nothing of CLIP), `model_inference` returns the logits of
the training path and depends on the learned tensors, evaluation with cached text features
equals per-batch encoding, and a checkpoint round trip reproduces the predictions.
"""

from typing import NamedTuple

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from clipprompt.caching import CachedTextFeatures
from trainers import build_trainer, make_cfg, repository_trainers

PETS = "configs/datasets/oxford_pets.yaml"
BASE = ["abyssinian", "great pyrenees mountain dog", "boxer"]
NEW = ["bengal", "chihuahua"]
ROUTER = {"router.linear.weight", "router.linear.bias"}
# The LayerNorms of the tiny CLIP's 2 image residual blocks, which the release preset trains
# (as the release does: not ln_pre, not ln_post).
IMAGE_NORMS = {
    f"image_encoder.transformer.resblocks.{b}.{ln}.{p}" for b in (0, 1) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")
}  # fmt: skip


class Case(NamedTuple):
    trainer: str
    config: str
    learnable: frozenset
    loss_terms: frozenset
    routes: bool = False
    cached: bool = True
    opts: tuple = ()  # KEY VALUE overrides, e.g. prompt depths that fit the tiny CLIP's 2 blocks
    # Fitted in closed form from features (the linear probe), not by gradient steps: no optimiser,
    # and its training is `fit_head` on features of the batch.
    fitted: bool = False


CASES = {
    # Fixed text features: nothing to cache.
    "ZeroshotCLIP": Case(
        "ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/vit_b16.yaml", frozenset(), frozenset(), cached=False
    ),
    "CoOp": Case("CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", frozenset({"prompt_learner.ctx"}), frozenset({"loss_ce"})),
    "CoCoOp": Case(
        "CoCoOp",
        "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
        frozenset({"prompt_learner.ctx"} | {f"prompt_learner.meta_net.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}),
        frozenset({"loss_ce"}),
        cached=False,
    ),
    "KgCoOp": Case(
        "KgCoOp", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", frozenset({"prompt_learner.ctx"}),
        frozenset({"loss_ce", "loss_kg"}),
    ),
    "MoCoOp-paper": Case(
        "MoCoOp", "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml", frozenset({"prompt_learner.ctx"} | ROUTER),
        frozenset({"loss_cls", "loss_router", "loss_text"}), routes=True,
    ),
    "MoCoOp-release": Case(
        "MoCoOp", "configs/trainers/MoCoOp/release_vit_b16_ep25.yaml",
        frozenset({"prompt_learner.ctx", "text_bias"} | ROUTER | IMAGE_NORMS),
        frozenset({"loss_cls", "loss_router", "loss_text"}), routes=True,
    ),
    "MoPD": Case(
        "MoPD", "configs/trainers/MoPD/vit_b16_c4_bs128/oxford_pets.yaml",
        frozenset({"prompt_learner.ctx", "gate.linear.weight"}), frozenset({"loss_ce", "loss_mpd", "loss_mps"}),
        routes=True,
    ),
    "LASP-release": Case(
        "LASP", "configs/trainers/LASP/release_vit_b16.yaml",
        frozenset({"prompt_learner.ctx", "text_bias"} | IMAGE_NORMS), frozenset({"loss_ce", "loss_text"}),
    ),
    "LASP-paper": Case(
        "LASP", "configs/trainers/LASP/paper_vit_b16_ep10_batch1.yaml",
        frozenset({"prompt_learner.ctx", "text_bias"} | IMAGE_NORMS), frozenset({"loss_ce", "loss_text"}),
    ),
    # The KL term only shapes the update (gradient_guides): logged, and reaching no other tensor.
    "ProGrad": Case(
        "ProGrad", "configs/trainers/ProGrad/vit_b16_ep50.yaml", frozenset({"prompt_learner.ctx"}),
        frozenset({"loss_ce", "loss_kl"}),
    ),
    "IVLP": Case(
        "IVLP", "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
        frozenset({"prompt_learner.ctx", "prompt_learner.deep_text", "prompt_learner.image"}), frozenset({"loss_ce"}),
        opts=("TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 2),
    ),
    "MaPLe": Case(
        "MaPLe", "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        frozenset({"prompt_learner.ctx", "prompt_learner.deep_text"} | {f"prompt_learner.couplings.{j}.{p}" for j in (0, 1) for p in ("weight", "bias")}),
        frozenset({"loss_ce"}), opts=("TRAINER.MAPLE.PROMPT_DEPTH", 2),
    ),
    "PromptSRC": Case(
        "PromptSRC", "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        frozenset({"prompt_learner.ctx", "prompt_learner.deep_text", "prompt_learner.image"}),
        frozenset({"loss_ce", "loss_scl_text", "loss_scl_image", "loss_scl_logits"}),
        opts=("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 2),
    ),
    "PLOT": Case("PLOT", "configs/trainers/PLOT/rn50.yaml", frozenset({"prompt_learner.ctx"}), frozenset({"loss_ce"})),
    # Its class weights are the head: nothing to cache.
    "LinearProbeCLIP": Case(
        "LinearProbeCLIP", "configs/trainers/LinearProbeCLIP/rn50.yaml", frozenset({"head.weight", "head.bias"}),
        frozenset({"loss_ce"}), cached=False, fitted=True,
    ),
}  # fmt: skip


def test_every_registered_trainer_has_a_case():
    assert {case.trainer for case in CASES.values()} == set(repository_trainers())


# Backbones (tests/open_clip_models.py for open_clip's) and the cases run on each.
BACKBONES = {
    "clip": list(CASES),
    "open_clip": list(CASES),
    "siglip": ["ZeroshotCLIP", "CoOp", "CoCoOp", "MoCoOp-release"],
}


@pytest.fixture(scope="module")
def backbones(tiny_clip, tiny_clip_path, tiny_open_clip):
    """backbone -> (frozen model, the config options that select it)."""
    layerscale, siglip = tiny_open_clip("layerscale"), tiny_open_clip("siglip")
    return {
        "clip": (tiny_clip, ["MODEL.BACKBONE.NAME", tiny_clip_path]),
        "open_clip": (layerscale[1], layerscale[0].opts()),
        "siglip": (siglip[1], siglip[0].opts_for_reference_path()),
    }


def build(name, backbone, output_dir):
    case = CASES[name]
    clip_model, backbone_opts = backbone
    # No warm-up: the first step runs at the configured rate, which moves every learnable tensor.
    opts = [
        *backbone_opts,
        "INPUT.SIZE",
        "(32, 32)",
        "TRAINER.PREC",
        "fp32",
        "OPTIM.WARMUP_EPOCH",
        "0",
        *case.opts,
    ]
    cfg = make_cfg(case.trainer, PETS, case.config, opts, output_dir=str(output_dir))
    torch.manual_seed(0)  # the same initial learnable tensors for every build of a case
    return build_trainer(cfg, BASE, BASE + NEW, clip_model=clip_model)


def batch():
    g = torch.Generator().manual_seed(1)
    return {"img": torch.randn(4, 3, 32, 32, generator=g), "label": torch.tensor([0, 2, 1, 2])}


def learnable(trainer):
    return {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}


def perturb(trainer, seed=2):
    """Move every learnable tensor away from its initial value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learnable(trainer).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(params=[(n, b) for b, names in BACKBONES.items() for n in names], ids="/".join)
def case(request, backbones, tmp_path):
    name, backbone = request.param
    return CASES[name], build(name, backbones[backbone], tmp_path)


def test_learnable_tensors_are_exactly_the_declared_ones(case):
    expected, trainer = case
    assert set(learnable(trainer)) == expected.learnable
    assert (trainer.optim is None) == (not expected.learnable or expected.fitted)


def test_training_step_changes_exactly_the_learnable_tensors(case):
    expected, trainer = case
    if not expected.learnable:
        trainer.before_train()  # a model with nothing to learn runs no epoch: train.py evaluates it
        assert trainer.start_epoch == trainer.max_epoch
        return
    before = {n: t.detach().clone() for n, t in trainer.model.state_dict(keep_vars=True).items()}
    if expected.fitted:
        fit_on_the_batch(trainer)
    else:
        trainer.set_model_mode("train")
        trainer.batch_idx, trainer.num_batches = 0, 2  # not an epoch's last batch: no LR step
        summary = trainer.forward_backward(batch())
        assert set(summary) == {"loss", "acc"} | (
            expected.loss_terms if len(expected.loss_terms) > 1 else set()
        )
    for name, tensor in trainer.model.state_dict(keep_vars=True).items():
        if name in expected.learnable:
            if not expected.fitted:
                assert tensor.grad is not None and tensor.grad.abs().sum() > 0, f"{name} gets no gradient"
            assert not torch.equal(tensor.detach(), before[name]), f"{name} was not updated"
        else:
            assert tensor.grad is None and torch.equal(tensor.detach(), before[name]), f"{name} changed"


def fit_on_the_batch(trainer):
    """Fit a closed-form model on the batch's features (training and validation alike) and check
    that it then classifies the batch as scikit-learn's fit does."""
    data = batch()
    trainer.set_model_mode("eval")
    with torch.no_grad():
        features = trainer.model.encode_image(data["img"]).double().numpy()
    labels = data["label"].numpy()
    search = trainer.fit_head((features, labels), (features, labels))
    with torch.no_grad():
        predicted = trainer.model_inference(data["img"]).argmax(dim=1).numpy()
    assert (predicted == search.classifier.predict(features)).all()


def test_inference_gives_the_logits_of_the_training_path(case):
    expected, trainer = case
    perturb(trainer)
    trainer.set_model_mode("eval")
    data = batch()
    with torch.no_grad():
        terms, train_logits, train_routing = trainer.model.losses(data["img"], data["label"])
        logits = trainer.model_inference(data["img"])
    if expected.loss_terms:
        assert set(terms) == expected.loss_terms
    torch.testing.assert_close(logits, train_logits.float(), atol=1e-5, rtol=1e-5)
    assert logits.shape == (4, len(BASE))
    assert (train_routing is not None) == expected.routes == (trainer.routing_stats is not None)
    if expected.routes:
        _, routing = trainer.model.classify(data["img"])
        assert torch.equal(routing.index, train_routing.index)
        assert routing.index.shape == (4, trainer.model.top_k)
        assert len(trainer.routing_stats.names) == len(trainer.model.routing_names)


def test_inference_depends_on_the_learned_tensors(case):
    expected, trainer = case
    if not expected.learnable:
        pytest.skip(f"{expected.trainer} learns nothing: its inference depends on no learned tensor")
    trainer.set_model_mode("eval")
    image = batch()["img"]
    with torch.no_grad():
        initial = trainer.model_inference(image)
    perturb(trainer)
    with torch.no_grad():
        assert not torch.allclose(trainer.model_inference(image), initial, atol=1e-4)


def test_cached_evaluation_equals_per_batch_encoding(case):
    expected, trainer = case
    model = trainer.model
    assert isinstance(model, CachedTextFeatures) == expected.cached
    if not expected.cached:
        pytest.skip(f"{expected.trainer} has no text-feature cache (fixed or image-dependent class features)")
    perturb(trainer)
    trainer.set_model_mode("eval")
    image = batch()["img"]
    with torch.no_grad():
        per_batch = trainer.model_inference(image)
        with model.cached_text_features():
            cached = trainer.model_inference(image)
    torch.testing.assert_close(cached, per_batch, atol=1e-5, rtol=1e-5)
    assert model._text_cache is None


def test_checkpoint_round_trip_reproduces_the_predictions(case, backbones, request, tmp_path):
    expected, trainer = case
    if not expected.learnable:
        pytest.skip(f"{expected.trainer} learns nothing: it saves no checkpoint")
    perturb(trainer)
    trainer.set_model_mode("eval")
    image = batch()["img"]
    trainer.save_model(0, str(tmp_path / "run"))
    name, backbone = request.node.callspec.params["case"]
    fresh = build(name, backbones[backbone], tmp_path / "fresh")
    fresh.set_model_mode("eval")
    with torch.no_grad():
        assert not torch.equal(fresh.model_inference(image), trainer.model_inference(image))
        fresh.load_model(str(tmp_path / "run"), epoch=1)
        torch.testing.assert_close(
            fresh.model_inference(image), trainer.model_inference(image), atol=0, rtol=0
        )
