"""ProGrad: the projection and the KL term against their formulas, the release's word-count
initialisation and templates, and the trainer's update: the projected cross-entropy gradient,
the KL never added, correct under gradient scaling (an overflowed KL gradient skips the step).
Parity with the authors' code (BeierZhu/Prompt-align run unmodified on a tiny CLIP) is in
docs/BASELINES.md."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.clip_loading import clip
from clipprompt.methods.prograd import kl_to_teacher, project_conflicting, word_count_context
from clipprompt.templates import TemplateError
from tools.protocols import ALL, dataset_config
from trainers.prograd import prograd_template

pytestmark = pytest.mark.usefixtures("one_thread")

PETS = "configs/datasets/oxford_pets.yaml"
VIT = "configs/trainers/ProGrad/vit_b16_ep50.yaml"
BASE, NEW = ["abyssinian", "boxer", "pug"], ["bengal"]
# The release's per-dataset templates (ProGrad.public/trainers/prograd.py, CUSTOM_TEMPLATES).
RELEASE_TEMPLATES = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    **dict.fromkeys(
        ["imagenet", "imagenet_sketch", "imagenetv2", "imagenet_a", "imagenet_r"], "a photo of a {}."
    ),
}


def make_cfg(config=VIT, dataset=PETS, *opts):
    return trainers.make_cfg(
        "ProGrad", dataset, config, ["INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32", *opts]
    )


def build(tiny_clip, *opts):
    torch.manual_seed(0)
    return trainers.build_trainer(make_cfg(VIT, PETS, *opts), BASE, BASE + NEW, clip_model=tiny_clip)


def test_projection_removes_the_conflicting_component():
    guide = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    grad = torch.tensor([[-2.0, 3.0], [1.0, 1.0]])
    torch.testing.assert_close(project_conflicting(grad, guide, 1.0), torch.tensor([[0.0, 3.0], [1.0, 1.0]]))
    torch.testing.assert_close(project_conflicting(grad, guide, 0.8), torch.tensor([[-0.4, 3.0], [1.0, 1.0]]))
    agreeing = torch.tensor([[2.0, 3.0], [1.0, 1.0]])
    assert project_conflicting(agreeing, guide) is agreeing


def test_projection_edge_cases_and_scale():
    grad, guide = torch.randn(3, 4), torch.randn(3, 4)
    guide = guide - ((grad * guide).sum() / grad.pow(2).sum() + 1) * grad  # a conflicting guide
    assert (grad * guide).sum() < 0
    # Homogeneous in the gradient, blind to the guide's scale: the same under a loss scale.
    torch.testing.assert_close(
        project_conflicting(1024 * grad, 1024 * guide), 1024 * project_conflicting(grad, guide)
    )
    assert project_conflicting(grad, torch.zeros_like(guide)) is grad  # |G_g| = 0: no NaN
    overflowed = guide.clone()
    overflowed[0, 0] = float("inf")
    assert project_conflicting(grad, overflowed).isnan().all()


def test_kl_term_is_the_kl_plus_the_teachers_entropy():
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    for t in (1.0, 2.0):
        p = F.softmax(teacher / t, dim=-1)
        kl = F.kl_div(F.log_softmax(student / t, dim=-1), p, reduction="batchmean")
        entropy = -(p * p.log()).sum(-1).mean()
        torch.testing.assert_close(kl_to_teacher(student, teacher, t), t**2 * (kl + entropy))


def test_templates_are_the_releases():
    for dataset in ALL:
        cfg = make_cfg(VIT, dataset_config(dataset))
        assert prograd_template(cfg) == RELEASE_TEMPLATES[dataset], dataset
    coop = make_cfg(VIT, PETS, "TRAINER.PROGRAD.TEMPLATE", "dataset", "TRAINER.PROGRAD.CTX_INIT", "False")
    assert prograd_template(coop) == "a photo of a {}, a type of pet."


def test_word_count_initialisation_is_the_releases(tiny_clip):
    """Pets: 8 words, 9 BPE tokens ("pet," is two): the last 8 of 16 vectors from the first 8
    tokens, zeros before, the 9th token ("a") fixed before the class name, as the release's
    prompt "X X X X X X X X a type of pet, a photo of a abyssinian." tokenises."""
    template = RELEASE_TEMPLATES["oxford_pets"]
    form, table = word_count_context(template, 16, tiny_clip.token_embedding)
    ids = clip.tokenize(f"{'X ' * 8}a type of pet, a photo of a abyssinian.")[0]
    assert torch.equal(table[:8], torch.zeros(8, table.shape[1]))
    torch.testing.assert_close(table[8:], tiny_clip.token_embedding.weight[ids[9:17]].detach())
    model = build(tiny_clip).model
    assembler = model.prompt_learner.assembler
    row = assembler.token_ids[0]
    assert torch.equal(row[17:], ids[17 : len(row)])  # "a abyssinian . EOT", cut after the EOT
    assert torch.equal(model.prompt_learner.ctx.detach(), table)
    assert form.fixed_ids == tuple(ids[17:18].tolist())
    with pytest.raises(TemplateError, match="has 8 words but TRAINER.PROGRAD.N_CTX is 4"):
        word_count_context(template, 4, tiny_clip.token_embedding)


def test_a_template_the_initialisation_cannot_use_is_refused_with_the_config():
    with pytest.raises(TemplateError, match="ends with ' {}.' .* set TRAINER.PROGRAD.CTX_INIT False"):
        make_cfg(VIT, "configs/datasets/dtd.yaml", "TRAINER.PROGRAD.TEMPLATE", "dataset")  # "{} texture."
    make_cfg(
        VIT,
        "configs/datasets/dtd.yaml",
        "TRAINER.PROGRAD.TEMPLATE",
        "dataset",
        "TRAINER.PROGRAD.CTX_INIT",
        "False",
    )


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.randn(4, 3, 32, 32, generator=g), "label": torch.tensor([0, 2, 1, 2])}


def expected_update(trainer, data, strength=1.0):
    """The released update: both gradients of the same batch, the CE's projected."""
    ctx = trainer.model.prompt_learner.ctx
    terms, _, _ = trainer.model.losses(data["img"], data["label"])
    g_ce = torch.autograd.grad(terms["loss_ce"], ctx, retain_graph=True)[0]
    g_kl = torch.autograd.grad(terms["loss_kl"], ctx)[0]
    return g_ce, g_kl, project_conflicting(g_ce, g_kl, strength), terms


def step(trainer, data):
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    return trainer.forward_backward(data)


@pytest.mark.parametrize("scaled", [False, True])
def test_the_update_is_the_projected_cross_entropy_gradient(tiny_clip, scaled):
    trainer = build(tiny_clip, "TRAINER.PROGRAD.LAMBDA", "0.8")
    ctx = trainer.model.prompt_learner.ctx
    data = batch()
    with torch.no_grad():  # labelled as the shifted prompt predicts: its CE and KL gradients conflict
        ctx.add_(0.3 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(2)))
        data["label"] = trainer.model.classify(data["img"])[0].argmax(dim=1)
    g_ce, g_kl, projected, terms = expected_update(trainer, data, 0.8)
    assert F.cosine_similarity(g_ce.flatten(), g_kl.flatten(), dim=0) < 0
    if scaled:  # fp16 gradient scaling's path, with an exact power-of-two scale in fp32
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    summary = step(trainer, data)
    torch.testing.assert_close(ctx.grad, projected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ctx.grad, g_ce)  # the projection changed it
    # The minimised loss is the cross-entropy alone: the KL is logged, never added.
    assert summary["loss"] == pytest.approx(terms["loss_ce"].item())
    assert summary["loss_kl"] == pytest.approx(terms["loss_kl"].item())


def test_an_overflowed_kl_gradient_skips_the_scaled_step(tiny_clip, monkeypatch):
    trainer = build(tiny_clip)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model = trainer.model
    losses = model.losses

    def overflowing(image, label):  # a KL whose gradient overflows, as in fp16 it can
        terms, logits, routing = losses(image, label)
        return terms | {"loss_kl": terms["loss_kl"] * 1e38 * 1e38}, logits, routing

    monkeypatch.setattr(model, "losses", overflowing)
    monkeypatch.setattr(trainer, "detect_anomaly", lambda loss: None)  # fp16 training keeps going
    before = model.prompt_learner.ctx.detach().clone()
    summary = step(trainer, batch())
    assert summary["skipped"] == 1.0 and trainer.scaler.get_scale() < 2.0**10
    assert torch.equal(model.prompt_learner.ctx.detach(), before)
