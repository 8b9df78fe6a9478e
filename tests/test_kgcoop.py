"""KgCoOp: the knowledge-guided term, learnable tensors, hand-crafted prompts, base-to-new end to end."""

import os

import pytest
import torch
import torch.nn.functional as F

from clipprompt.knowledge import knowledge_guided_loss
from tests.dataset_layouts import make_dtd
from tests.e2e import TINY_OPTS, evaluated_log, randomise_images, read_log, result_accuracy, run_train


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
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from trainers import kgcoop

    return kgcoop


def make_cfg(kgcoop, **prompts):
    from dassl.config import get_cfg_default

    from trainers import prompt_trainer

    cfg = get_cfg_default()
    prompt_trainer.add_config(cfg)
    kgcoop.add_config(cfg)
    for key, value in prompts.items():
        cfg.DATASET.PROMPTS[key] = value
    return cfg


def build(kgcoop, clip_model, template="a photo of a {}."):
    from clipprompt.templates import fill
    from clipprompt.text_encoder import TextEncoder, encode_texts

    cfg = make_cfg(kgcoop)
    encoder = TextEncoder(clip_model)
    hard = encode_texts(encoder, clip_model.token_embedding, [fill(template, c) for c in CLASSES])
    learner = kgcoop.PromptLearner(cfg, CLASSES, clip_model)
    return kgcoop.KnowledgeGuidedCLIP(learner, encoder, clip_model, hard)


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
    text_features = model.compute_text_features()
    logits = model.classify(torch.randn(3, 3, 32, 32), text_features)
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2])) + 8.0 * knowledge_guided_loss(
        text_features, model.hard_features
    )
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["prompt_learner.ctx"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert not model.hard_features.requires_grad
    assert "hard_features" not in model.state_dict()


def test_evaluation_caches_the_learned_features(kgcoop, tiny_clip):
    model = build(kgcoop, tiny_clip)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.classify(image, model.compute_text_features())
    with model.cached_text_features():
        torch.testing.assert_close(model(image), expected)


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
    trainer = object.__new__(kgcoop.KgCoOp)  # only the config is needed
    trainer.cfg = make_cfg(kgcoop, **prompts)
    assert trainer.knowledge_template() == expected


def test_config(kgcoop):
    from train import parse_args, setup_cfg

    cfg = setup_cfg(
        parse_args(["--trainer", "KgCoOp", "--dataset-config-file", DTD, "--config-file", KGCOOP_B2N])
    )
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH) == (128, 0.002, 100)
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_CONS_LR, cfg.TRAINER.PREC) == (1, 1e-5, "fp16")
    opts = cfg.TRAINER.KGCOOP
    assert (opts.N_CTX, opts.CTX_INIT, opts.W) == (4, "a photo of a", 8.0)
    assert cfg.DATASET.PROMPTS.KNOWLEDGE_TEMPLATE == "a photo of a {}, a type of texture."


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def dtd(kgcoop, tmp_path_factory):

    root = tmp_path_factory.mktemp("data")
    generated = make_dtd(str(root), num_classes=6, per_class=(4, 2, 3))
    randomise_images(generated.dataset_dir)
    return str(root)


def common(root, clip_path, output_dir, *extra):
    # amp: every loss term must be kept and logged in the mixed-precision mode as well.
    return [
        "--seed",
        1,
        "--trainer",
        "KgCoOp",
        "--config-file",
        KGCOOP_B2N,
        "--root",
        root,
        "--dataset-config-file",
        DTD,
        "--output-dir",
        output_dir,
        "MODEL.BACKBONE.NAME",
        clip_path,
        *TINY_OPTS,
        "TRAINER.PREC",
        "amp",
        "DATASET.NUM_SHOTS",
        "4",
        *extra,
    ]


@pytest.fixture(scope="module")
def base_run(dtd, tiny_clip_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kgcoop") / "train_base")
    run_train(*common(dtd, tiny_clip_path, out, "OPTIM.MAX_EPOCH", "2", "DATASET.SUBSAMPLE_CLASSES", "base"))
    return out


def test_kgcoop_trains_on_base_classes(base_run):
    log = read_log(base_run)
    assert "Hand-crafted prompt of the knowledge-guided term: 'a photo of a {}, a type of texture.'" in log
    assert "Learnable tensors (256 values): prompt_learner.ctx\n" in log  # CLIP stays frozen
    steps = [line for line in log.splitlines() if line.startswith("epoch [")]
    assert len(steps) == 6 and all("loss_ce" in s and "loss_kg" in s for s in steps)
    assert 0 <= result_accuracy(log) <= 100
    assert log.rstrip().splitlines()[-1].startswith("Elapsed")
    ckpt = torch.load(os.path.join(base_run, "prompt_learner", "model.pth.tar-2"), weights_only=True)
    assert list(ckpt["state_dict"]) == ["prompt_learner.ctx"]
    assert ckpt["state_dict"]["prompt_learner.ctx"].shape == (4, 64)


def test_kgcoop_base_model_evaluates_on_new_classes(base_run, dtd, tiny_clip_path, tmp_path):
    out = str(tmp_path / "test_new")
    run_train(
        "--eval-only",
        "--model-dir",
        base_run,
        *common(dtd, tiny_clip_path, out, "DATASET.SUBSAMPLE_CLASSES", "new"),
    )
    log = evaluated_log(out, 2, 9)  # 3 new classes x 3 test images
    assert log.rstrip().splitlines()[-1].startswith("* macro_f1")
