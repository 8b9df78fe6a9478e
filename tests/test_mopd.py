"""MoPD: loss terms against loop references written from docs/MOPD.md, gradient routing, precision
modes, checkpoint contents, teacher pools, and an end-to-end base-to-new run."""

import dataclasses
import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
import yaml

from clipprompt.hard_prompts import POOLS
from clipprompt.methods.mopd import (
    distillation_loss,
    mopd_losses,
    selection_loss,
    teacher_logits,
)
from clipprompt.routing import gather_selected
from tests.conftest import ROOT
from tests.e2e import CASES, DTD, TINY_OPTS, read_log, run_train
from tools.protocols import ALL

B, H, C, K = 5, 6, 7, 3

# ---------------------------------------------------------------- references (loops, docs/MOPD.md)


def softmax(row):
    e = [math.exp(x - max(row)) for x in row]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def reference_losses(student, teachers, scores, label, k, w, w2, tkd, combine):
    """The three weighted terms, one image and one teacher at a time."""
    ce = mpd = mps = 0.0
    n = len(label)
    for b in range(n):
        y = int(label[b])
        s_row = student[b].tolist()
        ce += -math.log(softmax(s_row)[y])
        top = sorted(range(len(scores[b])), key=lambda h: -float(scores[b][h]))[:k]
        gate = softmax([float(scores[b][h]) for h in top])
        q = softmax([x / tkd for x in s_row])
        ps = [softmax([x / tkd for x in teachers[b][h].tolist()]) for h in top]
        if combine == "weighted_kl":
            mpd += tkd**2 * sum(wh * kl(p, q) for wh, p in zip(gate, ps))
        else:
            mix = [sum(wh * p[c] for wh, p in zip(gate, ps)) for c in range(len(q))]
            mpd += tkd**2 * kl(mix, q)
        mps += sum(wh * -math.log(softmax(teachers[b][h].tolist())[y]) for wh, h in zip(gate, top))
    return {"loss_ce": w * ce / n, "loss_mpd": (1 - w) * mpd / n, "loss_mps": w2 * mps / n}


def random_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    teachers = torch.randn(B, H, C, generator=g, dtype=torch.float64) * 3
    scores = torch.randn(B, H, generator=g, dtype=torch.float64)
    label = torch.randint(0, C, (B,), generator=g)
    return student, teachers, scores, label


# ---------------------------------------------------------------- core (no Dassl)


@pytest.mark.parametrize("combine", ["weighted_kl", "mixture"])
@pytest.mark.parametrize("tkd", [1.0, 2.5])
def test_losses_match_reference(combine, tkd):
    student, teachers, scores, label = random_inputs()
    losses, index, weights = mopd_losses(student, teachers, scores, label, K, 0.7, 0.3, tkd, combine)
    expected = reference_losses(student, teachers, scores, label, K, 0.7, 0.3, tkd, combine)
    assert list(losses) == ["loss_ce", "loss_mpd", "loss_mps"]
    for name, value in expected.items():
        assert losses[name].dtype == torch.float32
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name
    assert index.shape == weights.shape == (B, K)
    assert torch.allclose(weights.sum(-1), torch.ones(B))


def test_combine_modes_differ_and_temperature_matters():
    student, teachers, scores, _ = random_inputs(1)
    index, weights = scores.topk(K, dim=-1)[1], scores.topk(K, dim=-1)[0].softmax(-1)
    selected = gather_selected(teachers, index)
    kl1 = distillation_loss(student, selected, weights, 1.0, "weighted_kl")
    mix1 = distillation_loss(student, selected, weights, 1.0, "mixture")
    kl2 = distillation_loss(student, selected, weights, 2.0, "weighted_kl")
    # KL is convex in its first argument: the mixture's KL is at most the weighted mean.
    assert mix1 < kl1
    assert not torch.isclose(kl1, kl2)
    with pytest.raises(ValueError, match="TEACHER_COMBINE"):
        distillation_loss(student, selected, weights, 1.0, "average")


def test_teacher_logits_and_selection():
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(B, 8, generator=g), dim=-1)
    table = F.normalize(torch.randn(H, C, 8, generator=g), dim=-1)
    logits = teacher_logits(feats, table, 10.0)
    for b in range(B):
        for h in range(H):
            assert torch.allclose(logits[b, h], 10.0 * table[h] @ feats[b], atol=1e-5)
    index = torch.tensor([[h % H, (h + 2) % H] for h in range(B)])
    selected = gather_selected(logits, index)
    for b in range(B):
        for j in range(2):
            assert torch.equal(selected[b, j], logits[b, index[b, j]])


def test_selection_loss_matches_weighted_cross_entropy():
    _, teachers, _, label = random_inputs(3)
    weights = torch.rand(B, H, dtype=torch.float64).softmax(-1)
    per_teacher = torch.stack([F.cross_entropy(teachers[:, h], label, reduction="none") for h in range(H)], 1)
    assert selection_loss(teachers, weights, label).item() == pytest.approx(
        (weights * per_teacher).sum(1).mean().item()
    )


def test_mixture_survives_a_weight_that_underflows():
    student, teachers, scores, label = random_inputs(4)
    scores = scores.float().clone()
    scores[:, 0] = 200.0  # the other kept weights underflow to exactly 0 in fp32
    scores.requires_grad_(True)
    losses, _, weights = mopd_losses(student, teachers, scores, label, K, 0.5, 0.5, 1.0, "mixture")
    assert (weights == 0).any()
    sum(losses.values()).backward()
    assert torch.isfinite(scores.grad).all()


# ---------------------------------------------------------------- model and trainer (Dassl)


@pytest.fixture(scope="module")
def mopd():
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from clipprompt.methods import mopd

    return mopd


def test_teacher_pools(mopd):
    task = [f"a photo of a {{}}, number {i}." for i in range(12)]
    assert mopd.teacher_pool("task", task) == task
    assert mopd.teacher_pool("task+noisy", task) == task + list(POOLS["noisy"])
    assert len(mopd.teacher_pool("task + lasp", task)) == 12 + 34
    assert mopd.teacher_pool("lasp", ()) == list(POOLS["lasp"])
    for bad, match in [
        ("", "names no teacher pool"),
        ("task+", "names no teacher pool"),
        ("bogus", "unknown pool 'bogus'"),
        ("task+task", "twice"),
    ]:
        with pytest.raises(ValueError, match="TRAINER.MOPD.POOL") as err:
            mopd.teacher_pool(bad, task)
        assert match in str(err.value)
    with pytest.raises(ValueError, match="DATASET.PROMPTS.TEACHER_TEMPLATES is empty"):
        mopd.teacher_pool("task+noisy", ())
    with pytest.raises(ValueError, match=r"TEACHER_TEMPLATES\[1\]"):
        mopd.teacher_pool("task", ["a photo of a {}.", "no placeholder"])


def build_model(mopd, clip_model, classnames=("cat", "dog", "red fox", "owl")):
    """The trainer's model with four teachers and the student of the configs (4 context
    vectors from "a photo of a"), T = 2, W 0.8, W2 0.1."""
    from clipprompt.methods.coop import ContextPrompt
    from clipprompt.templates import fill
    from clipprompt.text_encoder import TextEncoder, encode_texts

    encoder = TextEncoder(clip_model)
    templates = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}.", "a {} in the snow."]
    texts = [fill(t, c) for t in templates for c in classnames]
    table = encode_texts(encoder, clip_model.token_embedding, texts).view(len(templates), len(classnames), -1)
    student = ContextPrompt(classnames, clip_model.token_embedding, 4, "a photo of a")
    options = mopd.DistillationOptions(num_teachers=2, w=0.8, w2=0.1, temperature=1.0, combine="weighted_kl")
    model = mopd.DistilledCLIP(clip_model, student, encoder, templates, table, options)
    with torch.no_grad():  # away from the zero initialisation, where all teachers tie
        model.gate.linear.weight.normal_(0, 1.0)
    return model


def gradients(model, image, label, combine="weighted_kl", terms=("loss_ce", "loss_mpd", "loss_mps"), tkd=1.0):
    """Gradients of the context and the gate from the model's own loss terms `terms`."""
    model.zero_grad()
    model.options = dataclasses.replace(model.options, combine=combine, temperature=tkd)
    losses, _, _ = model.losses(image, label)
    sum(losses[t] for t in terms).backward()
    ctx, gate = model.prompt_learner.ctx.grad, model.gate.linear.weight.grad
    return (None if ctx is None else ctx.clone()), (None if gate is None else gate.clone())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3, 1, 2])


def nonzero(grad):
    return grad is not None and grad.abs().sum() > 0


def test_gradient_routing(mopd, tiny_clip, batch):
    model = build_model(mopd, tiny_clip)
    ctx, gate = gradients(model, *batch, terms=("loss_mps",))
    assert not nonzero(ctx) and nonzero(gate), "L_mps must train the gate only"
    ctx, gate = gradients(model, *batch, terms=("loss_mpd",))
    assert nonzero(ctx) and nonzero(gate), "L_mpd must reach the prompt and the gate"
    ctx, gate = gradients(model, *batch, terms=("loss_ce",))
    assert nonzero(ctx) and not nonzero(gate), "CE must train the prompt only"
    assert not model.teacher_features.requires_grad


@pytest.mark.parametrize("tkd", [1.0, 2.0])
def test_combine_modes_same_prompt_gradient_different_gate_gradient(mopd, tiny_clip, batch, tkd):
    model = build_model(mopd, tiny_clip)
    ctx_kl, gate_kl = gradients(model, *batch, "weighted_kl", ("loss_mpd",), tkd)
    ctx_mix, gate_mix = gradients(model, *batch, "mixture", ("loss_mpd",), tkd)
    assert torch.allclose(ctx_kl, ctx_mix, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(gate_kl, gate_mix, rtol=1e-3, atol=1e-6)


def test_inference_uses_the_student_only(mopd, tiny_clip, batch):
    model = build_model(mopd, tiny_clip).eval()
    image = batch[0]
    with torch.no_grad():
        plain = model(image)
        model.gate.linear.weight.normal_()
        model.teacher_features.normal_()
        with model.cached_text_features():
            cached = model(image)
    assert torch.allclose(plain, cached, atol=1e-5)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "prompt_learner.ctx",
        "gate.linear.weight",
    ]
    assert "teacher_features" not in model.state_dict()


# ---------------------------------------------------------------- train.py (Dassl)

PETS = "configs/datasets/oxford_pets.yaml"
PETS_TEACHERS = 12


def build_trainer(root, clip_path, output_dir, *opts, dataset_config=PETS):
    import trainers

    case = CASES["MoPD"]
    options = ["MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS, "DATASET.NUM_SHOTS", "4", *opts]
    cfg = trainers.make_cfg(
        "MoPD", dataset_config, case.config, options, root=root, output_dir=output_dir, seed=1
    )
    return trainers.build_trainer(cfg)


@pytest.mark.parametrize("prec", ["fp32", "fp16", "amp"])
def test_every_precision_keeps_three_finite_terms(mopd, pets, tiny_clip_path, tmp_path, prec):
    trainer = build_trainer(
        pets, tiny_clip_path, str(tmp_path), "TRAINER.PREC", prec, "DATASET.SUBSAMPLE_CLASSES", "base"
    )
    assert trainer.model.dtype == (torch.float16 if prec == "fp16" else torch.float32)
    if prec == "amp":
        assert trainer.amp_dtype == torch.bfloat16  # CPU autocast
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    for name in ("loss_ce", "loss_mpd", "loss_mps"):
        assert math.isfinite(summary[name]) and summary[name] > 0, (prec, name, summary)
    assert summary["loss"] == pytest.approx(
        summary["loss_ce"] + summary["loss_mpd"] + summary["loss_mps"], rel=1e-4
    )
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), before[name]), f"{name} not updated under {prec}"


def read_stats(output_dir):
    with open(os.path.join(output_dir, "teacher_stats.json")) as f:
        return json.load(f)


def test_base_run_logs_losses_and_teacher_stats(mopd, base_run):
    train_dir = base_run("MoPD")
    log = read_log(train_dir)
    assert "Routing on test (epoch 2, 9 images)" in log.split("=> result")[-1]
    steps = [line for line in log.splitlines() if line.startswith("epoch [")]
    assert all("loss_ce" in s and "loss_mpd" in s and "loss_mps" in s for s in steps)
    assert "Routing on train (epoch 2, 12 images)" in log  # 3 base classes x 4 shots
    stats = read_stats(train_dir)
    with open(os.path.join(ROOT, PETS)) as f:
        assert stats["names"] == yaml.safe_load(f)["DATASET"]["PROMPTS"]["TEACHER_TEMPLATES"]
    assert stats["top_k"] == 3
    with open(os.path.join(train_dir, "teacher_stats.csv")) as f:
        assert len(f.readlines()) == 1 + 3 * PETS_TEACHERS


def test_checkpoint_holds_the_context_and_the_gate_only(mopd, base_run):
    ckpt = torch.load(os.path.join(base_run("MoPD"), "prompt_learner", "model.pth.tar-2"), weights_only=True)
    shapes = {n: tuple(t.shape) for n, t in ckpt["state_dict"].items()}
    assert shapes == {"prompt_learner.ctx": (4, 64), "gate.linear.weight": (PETS_TEACHERS, 32)}


@pytest.mark.e2e
def test_resumed_run_keeps_earlier_teacher_stats(mopd, base_run, pets, tiny_clip_path, tmp_path):
    # An interruption after epoch 1: a copy of the run whose newest checkpoint is epoch 1.
    train_dir = base_run("MoPD")
    out = str(tmp_path / "train_base")
    shutil.copytree(train_dir, out)
    with open(os.path.join(out, "config.yaml")) as f:
        config = f.read().replace(train_dir, out)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(config)
    os.remove(os.path.join(out, "prompt_learner", "model.pth.tar-2"))
    with open(os.path.join(out, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-1\n")
    run_train(*CASES["MoPD"].args(pets, tiny_clip_path, out, "DATASET.SUBSAMPLE_CLASSES", "base"))
    resumed, original = read_stats(out)["records"], read_stats(train_dir)["records"]
    assert [(r["epoch"], r["split"]) for r in resumed] == [(1, "train"), (2, "train"), (2, "test")]
    for a, b in zip(resumed, original):
        assert a["selection_share"] == pytest.approx(b["selection_share"])


@pytest.mark.e2e
def test_cross_dataset_evaluation_builds_the_source_teacher_pool(
    mopd, base_run, dtd, tiny_clip_path, tmp_path
):
    train_dir = base_run("MoPD")
    out = str(tmp_path / "xd")
    trainer = build_trainer(dtd, tiny_clip_path, out, "DATASET.SOURCE_CONFIG", PETS, dataset_config=DTD)
    assert trainer.routing_stats.names == read_stats(train_dir)["names"]  # the pets pool, not DTD's
    trainer.load_model(train_dir)
    trainer.test()
    stats = read_stats(out)
    assert stats["names"] == read_stats(train_dir)["names"]
    assert [(r["epoch"], r["split"], r["count"]) for r in stats["records"]] == [(2, "test", 18)]


def test_unknown_pool_is_a_clear_error(mopd):
    import trainers

    with pytest.raises(ValueError, match=r"TRAINER.MOPD.POOL 'task\+bogus': unknown pool 'bogus'"):
        trainers.make_cfg("MoPD", PETS, CASES["MoPD"].config, ["TRAINER.MOPD.POOL", "task+bogus"])


# docs/MOPD.md's per-dataset table: W, W2, T, epochs; the DG targets of an ImageNet-trained model use ImageNet's.
PER_DATASET = {
    "imagenet": (0.8, 0.0005, 3, 25),
    "caltech101": (0.8, 0.0005, 3, 100),
    "oxford_pets": (0.8, 0.5, 3, 25),
    "stanford_cars": (0.8, 0.1, 3, 100),
    "oxford_flowers": (0.8, 0.1, 3, 100),
    "food101": (0.5, 0.1, 2, 25),
    "fgvc_aircraft": (0.8, 0.1, 2, 25),
    "sun397": (0.8, 0.1, 2, 25),
    "dtd": (0.8, 0.1, 2, 25),
    "eurosat": (0.5, 0.1, 2, 100),
    "ucf101": (0.5, 0.1, 2, 25),
    **dict.fromkeys(["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"], (0.8, 0.0005, 3, 25)),
}
CONFIGS = os.path.join(ROOT, "configs", "trainers", "MoPD")


def mopd_cfg(dataset, config):
    import trainers

    return trainers.make_cfg(
        "MoPD", os.path.join(ROOT, "configs", "datasets", f"{dataset}.yaml"), os.path.join(CONFIGS, config)
    )


def test_every_dataset_has_a_config():
    assert sorted(PER_DATASET) == sorted(ALL)
    assert sorted(os.listdir(os.path.join(CONFIGS, "vit_b16_c4_bs128"))) == sorted(
        f"{d}.yaml" for d in PER_DATASET
    )


@pytest.mark.parametrize("dataset", sorted(PER_DATASET))
def test_per_dataset_configs(mopd, dataset):
    cfg = mopd_cfg(dataset, f"vit_b16_c4_bs128/{dataset}.yaml")
    opts = cfg.TRAINER.MOPD
    assert (opts.W, opts.W2, opts.NUM_TEACHERS, cfg.OPTIM.MAX_EPOCH) == PER_DATASET[dataset]
    assert (opts.N_CTX, opts.CTX_INIT, opts.POOL, opts.TEACHER_COMBINE) == (
        4,
        "a photo of a",
        "task",
        "weighted_kl",
    )
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.LR, cfg.OPTIM.LR_SCHEDULER) == (128, 0.002, "cosine")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert len(mopd.teacher_pool(opts.POOL, cfg.DATASET.PROMPTS.TEACHER_TEMPLATES)) == 12


@pytest.mark.parametrize(
    "stem, pool, size", [("noisy", "task+noisy", 24), ("lasp", "lasp", 34), ("task_lasp", "task+lasp", 46)]
)
def test_ablation_configs(mopd, stem, pool, size):
    cfg = mopd_cfg("dtd", f"vit_b16_c4_bs128_{stem}.yaml")
    assert cfg.TRAINER.MOPD.POOL == pool
    assert len(mopd.teacher_pool(pool, cfg.DATASET.PROMPTS.TEACHER_TEMPLATES)) == size
