"""KgCoOp: the knowledge-guided term, learnable tensors, hand-crafted prompts, logs of a training run."""

import pytest
import torch
import torch.nn.functional as F

from clipprompt.methods.kgcoop import knowledge_guided_loss
from tests.e2e import read_log


def direct_term(soft, hard):
    """1 - mean over classes of the explicit cosine, one class at a time."""
    total = 0.0
    for w, w_clip in zip(soft.tolist(), hard.tolist()):
        dot = sum(a * b for a, b in zip(w, w_clip))
        norms = sum(a * a for a in w) ** 0.5 * sum(b * b for b in w_clip) ** 0.5
        total += dot / norms
    return 1.0 - total / len(soft)


def test_knowledge_term_matches_direct_computation():
    soft, hard = torch.randn(5, 8) * 3, torch.randn(5, 8)
    assert knowledge_guided_loss(soft, hard).item() == pytest.approx(direct_term(soft, hard), abs=1e-6)


def test_knowledge_term_bounds_and_gradient():
    hard = torch.randn(4, 6)
    assert knowledge_guided_loss(hard * 2.5, hard).item() == pytest.approx(0.0, abs=1e-6)
    assert knowledge_guided_loss(-hard, hard).item() == pytest.approx(2.0, abs=1e-6)
    soft = torch.randn(4, 6, dtype=torch.float16, requires_grad=True)
    loss = knowledge_guided_loss(soft, hard)
    assert loss.dtype == torch.float32
    loss.backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0


def test_knowledge_term_rejects_mismatched_class_lists():
    with pytest.raises(ValueError, match="same class list"):
        knowledge_guided_loss(torch.randn(3, 8), torch.randn(4, 8))


# ---------------------------------------------------------------------- model (needs Dassl)

CLASSES = ["abyssinian", "school bus", "globe_thistle", "dog"]
KGCOOP_B2N = "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"
DTD = "configs/datasets/dtd.yaml"


@pytest.fixture(scope="module")
def kgcoop():
    from clipprompt.methods import kgcoop

    return kgcoop


def build(kgcoop, clip_model, template="a photo of a {}."):
    """KgCoOp's model for CLASSES with hand-crafted prompt `template` and the configs' student
    (4 context vectors from "a photo of a"), λ 8."""
    from clipprompt.methods.coop import ContextPrompt
    from clipprompt.templates import fill
    from clipprompt.text_encoder import TextEncoder, encode_texts

    encoder = TextEncoder(clip_model)
    prompt = ContextPrompt(CLASSES, clip_model.token_embedding, 4, "a photo of a")
    model = kgcoop.KnowledgeGuidedCLIP(clip_model, prompt, encoder, template, CLASSES, 8.0)
    # The model's hand-crafted features are those of the filled template, one text at a time.
    hard = encode_texts(
        TextEncoder(clip_model, truncate=False),
        clip_model.token_embedding,
        [fill(template, c) for c in CLASSES],
    )
    torch.testing.assert_close(model.hard_features, hard, atol=1e-6, rtol=1e-5)
    return model


def test_term_is_zero_at_init_when_hard_prompt_is_the_init_phrase(kgcoop, tiny_clip):
    """Context from "a photo of a" + class reproduces the hard prompt "a photo of a {}."."""
    model = build(kgcoop, tiny_clip)
    with torch.no_grad():
        term = knowledge_guided_loss(model.compute_text_features(), model.hard_features)
    assert term.item() == pytest.approx(0.0, abs=1e-5)
    other = build(kgcoop, tiny_clip, "{} texture.")
    with torch.no_grad():
        assert knowledge_guided_loss(other.compute_text_features(), other.hard_features).item() > 1e-3


def test_gradients_reach_only_the_context(kgcoop, tiny_clip):
    model = build(kgcoop, tiny_clip, "a photo of a {}, a type of texture.")
    terms, _, routing = model.losses(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]))
    assert set(terms) == {"loss_ce", "loss_kg"} and routing is None
    sum(terms.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["prompt_learner.ctx"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert not model.hard_features.requires_grad
    assert "hard_features" not in model.state_dict()


def test_knowledge_term_is_weighted_by_lambda(kgcoop, tiny_clip):
    model = build(kgcoop, tiny_clip, "{} texture.")
    with torch.no_grad():
        terms, logits, _ = model.losses(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]))
        soft, hard = model.compute_text_features(), model.hard_features
    # λ (1 - mean over classes of the cosine of each learned feature with its hand-crafted one),
    # class by class, without the function under test.
    cosines = [
        float(soft[c] @ hard[c]) / (float(soft[c].norm()) * float(hard[c].norm()))
        for c in range(len(CLASSES))
    ]
    expected = 8.0 * (1 - sum(cosines) / len(cosines))
    assert float(terms["loss_kg"]) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(terms["loss_ce"], F.cross_entropy(logits, torch.tensor([0, 1, 2])))


@pytest.mark.parametrize(
    "prompts, expected",
    [
        (
            {"TEMPLATE": "{} texture.", "KNOWLEDGE_TEMPLATE": "a photo of a {}, a type of texture."},
            "a photo of a {}, a type of texture.",
        ),
        (
            {"TEMPLATE": "a photo of a {}, a type of pet.", "KNOWLEDGE_TEMPLATE": ""},
            "a photo of a {}, a type of pet.",
        ),
    ],
)
def test_knowledge_template_falls_back_to_the_dataset_template(kgcoop, prompts, expected):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from trainers.config import prompt_defaults
    from trainers.kgcoop import knowledge_template

    node = prompt_defaults()
    node.merge_from_list([item for pair in prompts.items() for item in pair])
    assert knowledge_template(node) == expected


def test_config(kgcoop):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    import trainers

    cfg = trainers.make_cfg("KgCoOp", DTD, KGCOOP_B2N)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH) == (128, 0.002, 100)
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_CONS_LR, cfg.TRAINER.PREC) == (1, 1e-5, "fp16")
    opts = cfg.TRAINER.KGCOOP
    assert (opts.N_CTX, opts.CTX_INIT, opts.W) == (4, "a photo of a", 8.0)
    assert cfg.DATASET.PROMPTS.KNOWLEDGE_TEMPLATE == "a photo of a {}, a type of texture."


# ---------------------------------------------------------------------- end to end (shared run)


@pytest.mark.e2e
def test_kgcoop_logs_its_hard_prompt_and_both_terms(kgcoop, base_run):
    log = read_log(base_run("KgCoOp"))
    assert "Hand-crafted prompt of the knowledge-guided term: 'a photo of a {}, a type of texture.'" in log
    assert "Learnable tensors (256 values): prompt_learner.ctx\n" in log  # CLIP stays frozen
    steps = [line for line in log.splitlines() if line.startswith("epoch [")]
    assert len(steps) == 6 and all("loss_ce" in s and "loss_kg" in s for s in steps)
