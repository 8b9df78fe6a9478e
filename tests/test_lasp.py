"""LASP: the text-to-text loss against the release's formulation and a loop over templates and
classes, grouped prompts, virtual classes, the noise on the hand-crafted features, the
re-calibration options, and the presets' template lists. Parity with the authors' code
(1adrianb/lasp run unmodified on a tiny CLIP) is in docs/BASELINES.md."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.clip_loading import build_tiny_clip
from clipprompt.hard_prompts import LASP_34
from clipprompt.methods.lasp import template_groups, text_to_text_loss

pytestmark = pytest.mark.usefixtures("one_thread")

PETS = "configs/datasets/oxford_pets.yaml"
RELEASE = "configs/trainers/LASP/release_vit_b16.yaml"
PAPER = "configs/trainers/LASP/paper_vit_b16_ep10_batch1.yaml"
BASE, NEW = ["abyssinian", "boxer", "pug"], ["bengal", "chihuahua"]


def make_cfg(config=RELEASE, *opts):
    return trainers.make_cfg("LASP", PETS, config, ["INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32", *opts])


def build(tiny_clip, config=RELEASE, *opts):
    torch.manual_seed(0)
    return trainers.build_trainer(make_cfg(config, *opts), BASE, BASE + NEW, clip_model=tiny_clip)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_text_loss_is_the_releases_cross_entropy_for_one_group():
    """The release: F.cross_entropy on logits [T, C_soft, C_hard] puts the softmax over the soft
    prompts and averages over templates and classes."""
    soft, hard = unit(1, 5, 8), unit(4, 5, 8, seed=1)
    logits = 30.0 * soft @ hard.transpose(1, 2)  # [T, C, C]: soft prompt i, hard feature j
    expected = F.cross_entropy(logits, torch.arange(5).expand(4, 5))
    torch.testing.assert_close(text_to_text_loss(soft, hard, [[0, 1, 2, 3]], 30.0), expected)


def test_grouped_text_loss_against_a_loop():
    soft, hard, groups = unit(2, 4, 8), unit(3, 4, 8, seed=1), [[0, 1], [2]]
    terms = []
    for g, idx in enumerate(groups):
        for t in idx:
            for c in range(4):
                logits = torch.stack([20.0 * soft[g, e] @ hard[t, c] for e in range(4)])
                terms.append(-logits.log_softmax(dim=0)[c])
    torch.testing.assert_close(text_to_text_loss(soft, hard, groups, 20.0), torch.stack(terms).mean())


def test_template_groups():
    assert template_groups([], 3) == [[0, 1, 2]]
    assert template_groups([2, 1], 3) == [[0, 1], [2]]
    with pytest.raises(
        ValueError, match=r"TRAINER.LASP.GROUPS \[2, 2\] must be positive and sum to .* \(3\)"
    ):
        template_groups([2, 2], 3)


def test_presets_templates():
    release, paper = make_cfg().TRAINER.LASP, make_cfg(PAPER).TRAINER.LASP
    # The release's list repeats one template; the paper preset's groups hold each of the 34 once.
    assert sorted(release.TEMPLATES) == sorted([*LASP_34, "a bad photo of the {}."])
    assert sorted(paper.TEMPLATES) == sorted(LASP_34)
    assert (len(paper.GROUPS), sum(paper.GROUPS), release.GROUPS) == (19, 34, [])
    assert (release.NOISE_PROB, paper.NOISE_PROB) == (0.5, 0.0)


def test_release_model_losses_and_virtual_classes(tiny_clip):
    trainer = build(tiny_clip)
    model = trainer.model
    assert model.hard.shape[:2] == (35, 5)  # every template x (3 base + 2 virtual) text classes
    image, label = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 1, 2])
    torch.manual_seed(1)  # rand() >= 0.5: no noise this step
    assert torch.rand(1).item() >= 0.5
    torch.manual_seed(1)
    terms, logits, routing = model.losses(image, label)
    assert routing is None
    with torch.no_grad():
        w = F.normalize(model.text_encoder(*model.prompt_learner()).float() + model.text_bias, dim=-1)
        v = model.encode_image(image)
        expected = model.scale() * v @ w[:3].t()
        torch.testing.assert_close(logits, expected)
        torch.testing.assert_close(terms["loss_ce"], F.cross_entropy(expected, label))
        text = 5.0 * text_to_text_loss(w[None], model.hard, [list(range(35))], model.scale())
        torch.testing.assert_close(terms["loss_text"], text)


def test_noise_is_drawn_as_the_release_draws_it(tiny_clip):
    model = build(tiny_clip, RELEASE, "TRAINER.LASP.NOISE_PROB", "1.0").model
    torch.manual_seed(5)
    torch.rand(1)
    expected = model.hard + 0.05 * torch.randn_like(model.hard)
    torch.manual_seed(5)
    torch.testing.assert_close(model.noisy(model.hard), expected)
    quiet = build(tiny_clip, RELEASE, "TRAINER.LASP.NOISE_PROB", "0.0").model
    state = torch.get_rng_state()
    assert quiet.noisy(quiet.hard) is quiet.hard
    assert torch.equal(torch.get_rng_state(), state)  # no draw: the data order stays as without LASP's noise


def test_grouped_prompts_classify_with_the_normalised_mean(tiny_clip):
    trainer = build(tiny_clip, PAPER)
    model = trainer.model
    assert model.prompt_learner.ctx.shape[0] == 19 * 4
    with torch.no_grad():
        soft = F.normalize(model.text_encoder(*model.prompt_learner()).float() + model.text_bias, dim=-1)
        soft = soft.view(19, 5, -1)
        expected = F.normalize(soft[:, :3].mean(dim=0), dim=-1)
        torch.testing.assert_close(model.class_features(), expected)
    terms, _, _ = model.losses(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert set(terms) == {"loss_ce", "loss_text"}


def test_without_virtual_classes_only_the_run_classes_are_text_classes(tiny_clip):
    model = build(tiny_clip, RELEASE, "TRAINER.LASP.VIRTUAL_CLASSES", "False").model
    assert model.hard.shape[1] == 3


def test_recalibration_options(tiny_clip):
    trainer = build(tiny_clip, RELEASE, "OPTIM.WARMUP_EPOCH", "0")
    groups = trainer.optim.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.032, 0.0032])
    assert len(groups[1]["params"]) == 8  # ln_1 and ln_2 (weight, bias) of 2 residual blocks
    plain = build(
        tiny_clip, RELEASE, "TRAINER.LASP.TEXT_BIAS", "False", "TRAINER.LASP.FINETUNE_IMAGE_LN", "False"
    )
    assert [n for n, p in plain.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]


def test_layernorm_recalibration_needs_a_vit():
    resnet = build_tiny_clip(vision_layers=(1, 1, 1, 1), vision_width=64, image_resolution=64)
    cfg = trainers.make_cfg("LASP", PETS, RELEASE, ["INPUT.SIZE", "(64, 64)", "TRAINER.PREC", "fp32"])
    with pytest.raises(ValueError, match="TRAINER.LASP.FINETUNE_IMAGE_LN needs a ViT image tower"):
        trainers.build_trainer(cfg, BASE, clip_model=resnet)


def test_bad_values_are_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match="TRAINER.LASP.GROUPS"):
        make_cfg(RELEASE, "TRAINER.LASP.GROUPS", "[30, 4]")
    with pytest.raises(ValueError, match="TRAINER.LASP.NOISE_PROB must be in"):
        make_cfg(RELEASE, "TRAINER.LASP.NOISE_PROB", "1.5")
