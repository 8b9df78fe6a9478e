"""MoCoOp: the model (gradients, caching, class order), checkpoints, and end-to-end runs."""

import os

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.clip_loading import build_tiny_clip
from clipprompt.methods import mocoop as mixture
from clipprompt.templates import fill
from clipprompt.text_encoder import TextEncoder, encode_texts
from tests.e2e import CASES, read_log, run_train

PETS = "configs/datasets/oxford_pets.yaml"
DTD = "configs/datasets/dtd.yaml"
PRESETS = {p: f"configs/trainers/MoCoOp/{p}_vit_b16_ep25.yaml" for p in ("paper", "release")}
BASE = ["abyssinian", "beagle"]
NEW = ["bengal", "boxer", "chihuahua"]


def make_cfg(preset="paper", *opts):
    return trainers.make_cfg("MoCoOp", PETS, PRESETS[preset], ["INPUT.SIZE", "(32, 32)", *opts])


def build(cfg, clip_model):
    """The trainer's model for BASE, with NEW as the dataset's other (virtual) classes."""
    return trainers.build_trainer(cfg, BASE, BASE + NEW, clip_model=clip_model).model


def fresh_clip():
    """A frozen tiny CLIP of its own (FINETUNE_IMAGE_LN changes requires_grad in place)."""
    return build_tiny_clip().requires_grad_(False)


def batch():
    return torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])


@pytest.mark.parametrize("preset", ["paper", "release"])
def test_gradients_reach_exactly_the_learnable_tensors(preset):
    model = build(make_cfg(preset), fresh_clip())
    terms, *_ = model.losses(*batch())
    assert set(terms) == {"loss_cls", "loss_router", "loss_text"}
    sum(terms.values()).backward()
    learnable = {"prompt_learner.ctx", "router.linear.weight", "router.linear.bias"}
    if preset == "release":
        # The release trains the image resblocks' ln_1 / ln_2 only; ln_pre and ln_post stay frozen.
        learnable |= {"text_bias"} | {
            f"image_encoder.transformer.resblocks.{b}.{ln}.{p}"
            for b in (0, 1)
            for ln in ("ln_1", "ln_2")
            for p in ("weight", "bias")
        }
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == learnable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == learnable


def test_release_preset_trains_the_resblock_norms_at_a_tenth_of_the_rate():
    """The optimiser's second group is exactly the image resblocks' ln_1 / ln_2 (the release's
    selection), at IMAGE_LN_LR_MULT x OPTIM.LR; everything else learns at OPTIM.LR."""
    cfg = make_cfg("release")
    trainer = trainers.build_trainer(cfg, BASE, BASE + NEW, clip_model=fresh_clip())
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    prompt_group, norm_group = trainer.optim.param_groups
    assert {names[id(p)] for p in norm_group["params"]} == {
        f"image_encoder.transformer.resblocks.{b}.{ln}.{p}"
        for b in (0, 1)
        for ln in ("ln_1", "ln_2")
        for p in ("weight", "bias")
    }
    assert {names[id(p)] for p in prompt_group["params"]} == {
        "prompt_learner.ctx",
        "text_bias",
        "router.linear.weight",
        "router.linear.bias",
    }
    assert trainer.sched.base_lrs == pytest.approx([cfg.OPTIM.LR, 0.1 * cfg.OPTIM.LR])


def test_image_norm_finetuning_needs_a_vit():
    resnet = build_tiny_clip(vision_layers=(1, 1, 1, 1)).requires_grad_(False)
    with pytest.raises(ValueError, match="FINETUNE_IMAGE_LN needs a ViT image tower"):
        build(make_cfg("release"), resnet)


def test_each_loss_term_trains_its_own_part(tiny_clip):
    model = build(make_cfg("paper"), tiny_clip)
    terms, *_ = model.losses(*batch())
    expected = {
        "loss_cls": {"prompt_learner.ctx", "router.linear.weight", "router.linear.bias"},
        "loss_router": {"router.linear.weight", "router.linear.bias"},
        "loss_text": {"prompt_learner.ctx"},
    }
    for name, term in terms.items():
        model.zero_grad()
        term.backward(retain_graph=True)
        got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got == expected[name], name


def test_cached_evaluation_matches_uncached_forward():
    model = build(make_cfg("release"), fresh_clip()).eval()
    with torch.no_grad():
        model.text_bias.add_(0.1)
        image, _ = batch()
        uncached = model(image)
        with model.cached_text_features():
            assert model._text_cache.shape == (model.num_experts, len(BASE), 32)
            cached = model(image)
    torch.testing.assert_close(cached, uncached)
    assert model._text_cache is None


def test_training_step_encodes_every_prompt_once(tiny_clip, monkeypatch):
    model = build(make_cfg("paper"), tiny_clip)
    calls = []
    encode = model.text_encoder.forward
    monkeypatch.setattr(
        model.text_encoder, "forward", lambda x, *rest: calls.append(x.shape[0]) or encode(x, *rest)
    )
    model.losses(*batch())
    assert calls == [model.num_experts * (len(BASE) + len(NEW))]


def test_base_to_new_targets_use_each_images_own_class(tiny_clip):
    """Text classes are the base classes first, then the virtual new ones; the class-mode
    router target of a base image is built from its own class's hard features."""
    cfg = make_cfg("release", "TRAINER.MOCOOP.FINETUNE_IMAGE_LN", "False")
    model = build(cfg, tiny_clip)
    templates = list(cfg.DATASET.PROMPTS.EXPERT_TEMPLATES)
    groups = model.groups
    encoder = TextEncoder(tiny_clip)
    label = torch.tensor([1, 0])
    for y in label.tolist():
        own = torch.stack(
            [encode_texts(encoder, tiny_clip.token_embedding, [fill(t, BASE[y])])[0] for t in templates]
        )
        for g, idx in enumerate(groups):
            expected = torch.nn.functional.normalize(own[idx].mean(0), dim=0)
            torch.testing.assert_close(model.prototypes[g, y], expected, atol=1e-5, rtol=1e-5)
    v = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    target = mixture.router_target(v, label, model.prototypes, model.group_mean, "class", 0.0, 1.0)
    sims = torch.stack([v[b] @ model.prototypes[:, label[b]].t() for b in range(2)])
    torch.testing.assert_close(target, sims.softmax(dim=1))


@pytest.mark.parametrize("prec", ["fp16", "amp"])
def test_every_precision_keeps_every_loss_term(prec):
    cfg = make_cfg("release", "TRAINER.PREC", prec)
    clip_model = fresh_clip()
    if prec == "fp16":
        from clip.model import convert_weights

        convert_weights(clip_model)
    model = build(cfg, clip_model)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if prec == "amp" else torch.no_grad()
    with context:
        terms, *_ = model.losses(*batch())
    assert set(terms) == {"loss_cls", "loss_router", "loss_text"}
    assert all(torch.isfinite(t) and t.dtype == torch.float32 for t in terms.values())


# ----------------------------------------------------------------------------- end to end (shared runs)


def mocoop_eval(preset, root, dataset_config, clip_path, out, model_dir, *opts):
    args = CASES[f"MoCoOp-{preset}"].args(root, clip_path, out, *opts)
    args[args.index("--dataset-config-file") + 1] = dataset_config
    return run_train(*args, "--eval-only", "--model-dir", model_dir, check=False)


@pytest.mark.parametrize("preset", ["paper", "release"])
def test_base_run_reports_experts_and_virtual_classes(preset, base_run):
    assert "6 experts, top-2, 6 text classes (3 virtual)" in read_log(base_run(f"MoCoOp-{preset}"))


@pytest.mark.e2e
def test_checkpoint_with_another_expert_count_is_refused(base_run, pets, tiny_clip_path, tmp_path):
    opts = (
        "DATASET.SUBSAMPLE_CLASSES",
        "new",
        "TRAINER.MOCOOP.GROUPING",
        "single",
        "TRAINER.MOCOOP.TOPK",
        "1",
    )
    train_dir = base_run("MoCoOp-paper")
    proc = mocoop_eval("paper", pets, PETS, tiny_clip_path, str(tmp_path / "single"), train_dir, *opts)
    assert proc.returncode != 0
    assert "does not fit the model" in proc.stderr
    assert (
        "'prompt_learner.ctx' has shape" in proc.stderr and "'router.linear.weight' has shape" in proc.stderr
    )


@pytest.mark.e2e
def test_cross_dataset_evaluation_uses_the_source_experts(base_run, dtd, tiny_clip_path, tmp_path):
    """A pets-trained model (6 experts) evaluated on DTD (5 experts of its own): it needs the
    source's experts (DATASET.SOURCE_CONFIG); without them the checkpoint does not fit."""
    train_dir = base_run("MoCoOp-paper")
    own = mocoop_eval("paper", dtd, DTD, tiny_clip_path, str(tmp_path / "own_experts"), train_dir)
    assert own.returncode != 0 and "'prompt_learner.ctx' has shape" in own.stderr
    out = str(tmp_path / "source_experts")
    proc = mocoop_eval("paper", dtd, DTD, tiny_clip_path, out, train_dir, "DATASET.SOURCE_CONFIG", PETS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = read_log(out)
    assert "6 experts, top-2" in log and "* total: 18" in log


def test_cls_temperature_rescales_logits_only(tiny_clip):
    image, _ = batch()
    clip_scale = build(make_cfg("paper"), tiny_clip).eval()
    paper_tau = build(make_cfg("paper", "TRAINER.MOCOOP.CLS_TEMPERATURE", "0.07"), tiny_clip).eval()
    paper_tau.load_state_dict(clip_scale.state_dict())
    with torch.no_grad():
        a, b = clip_scale(image), paper_tau(image)
    torch.testing.assert_close(b, a / tiny_clip.logit_scale.exp() / 0.07, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.argmax(1), b.argmax(1))


MOCOOP_CONFIGS = "configs/trainers/MoCoOp"


@pytest.mark.parametrize(
    "stem",
    sorted(
        f[: -len(".yaml")]
        for f in os.listdir(MOCOOP_CONFIGS)
        if f.endswith(".yaml") and not f.startswith("demo")
    ),
)
def test_imagenet_memory_settings_of_every_expert_config(stem):
    """A config that keeps the 20 ImageNet experts needs the chunked, checkpointed text encoder
    there (docs/PERFORMANCE.md); the scripts pick <config>/imagenet.yaml, which must change
    nothing else."""
    from trainers.config import read_config_file

    shared = read_config_file(os.path.join(MOCOOP_CONFIGS, f"{stem}.yaml"))
    per_dataset = os.path.join(MOCOOP_CONFIGS, stem, "imagenet.yaml")
    if shared["TRAINER"]["MOCOOP"].get("GROUPING", "dataset") == "single":
        assert not os.path.exists(per_dataset), "one prompt fits without the memory settings"
        return
    assert os.path.isfile(per_dataset), f"{per_dataset} is missing"
    imagenet = read_config_file(per_dataset)
    memory = {"PREC": "fp16", "TEXT_ENCODER": {"CHUNK_SIZE": 1000, "CHECKPOINT": True}}
    assert {k: imagenet["TRAINER"].get(k) for k in memory} == memory
    for k in memory:
        shared["TRAINER"].pop(k, None), imagenet["TRAINER"].pop(k)
    assert imagenet == shared
