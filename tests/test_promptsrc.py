"""PromptSRC (clipprompt.methods.promptsrc, trainers/promptsrc.py): its loss terms against
straightforward references computed with CLIP's own forward passes, the release's 60 templates,
GPA's weights and aggregate, and a run killed after an epoch that resumes to the same final
tensors as one never interrupted (the aggregate is checkpointed). Parity with the authors' code
is in docs/BASELINES.md."""

import contextlib
import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import train
import trainers
from clipprompt.clip_loading import clip
from clipprompt.methods.promptsrc import PROMPTSRC_60, gaussian_weights
from clipprompt.templates import fill
from tests.e2e import CASES, kill_around_write, read_log, run_train

PETS = "configs/datasets/oxford_pets.yaml"
CONFIG = "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
CLASSES = ["abyssinian", "great pyrenees mountain dog", "dog"]
DEPTHS = ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 2]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def build(clip_model, *opts):
    torch.manual_seed(0)
    cfg = trainers.make_cfg(
        "PromptSRC", PETS, CONFIG, ["INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32", *DEPTHS, *opts]
    )
    return trainers.build_trainer(cfg, CLASSES, clip_model=clip_model)


def test_the_release_templates():
    assert len(PROMPTSRC_60) == len(set(PROMPTSRC_60)) == 60
    assert PROMPTSRC_60[:3] == ("a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.")
    assert PROMPTSRC_60[-2:] == ("a pixelated photo of a {}.", "itap of the {}.")


def test_losses_match_straightforward_references(tiny_clip, one_thread):
    trainer = build(tiny_clip, "TRAINER.PROMPTSRC.TEMPLATES", "ensemble7")
    model = trainer.model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    image, label = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 2, 1, 2])
    terms, logits, routing = model.losses(image, label)
    with torch.no_grad():
        text = model.compute_text_features()
        features = model.encode_image(image)
        templates = model.templates()
        assert len(templates) == 7
        # The mean of CLIP's own unnormalised 77-token text features over the templates.
        frozen = torch.stack(
            [tiny_clip.encode_text(clip.tokenize([fill(t, c) for c in CLASSES])) for t in templates]
        )
        frozen_text = F.normalize(frozen.mean(dim=0), dim=-1)
        frozen_image = F.normalize(tiny_clip.encode_image(image), dim=-1)
        scale = tiny_clip.logit_scale.exp()
        p_frozen = (scale * frozen_image @ frozen_text.t()).softmax(dim=-1)
        log_p = (scale * features @ text.t()).log_softmax(dim=-1)
        expected = {
            "loss_ce": F.cross_entropy(scale * features @ text.t(), label),
            "loss_scl_text": 25 * (text - frozen_text).abs().mean(),
            "loss_scl_image": 10 * (features - frozen_image).abs().mean(),
            "loss_scl_logits": (p_frozen * (p_frozen.log() - log_p)).sum() / (4 * len(CLASSES)),
        }
    assert routing is None and set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, atol=1e-6, rtol=1e-5)
        assert value > 0
    torch.testing.assert_close(logits, scale * features @ text.t())
    assert not any(t.requires_grad for t in (model.frozen_text_features(),))


def test_gpa_weights_are_a_normalised_gaussian_over_the_epochs():
    weights = np.array(gaussian_weights(15, 1, 20))
    epochs = np.arange(1, 21)
    expected = np.exp(-0.5 * (epochs - 15) ** 2)
    np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-12)
    assert weights.argmax() == 14
    with pytest.raises(ValueError, match="GPA_STD must be positive"):
        gaussian_weights(15, 0, 20)
    with pytest.raises(ValueError, match="give every epoch 1..20 zero weight"):
        gaussian_weights(1e6, 1e-3, 20)


def test_gpa_replaces_the_tensors_with_their_weighted_sum_after_the_last_epoch(tiny_clip):
    model = build(tiny_clip).model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    weights = gaussian_weights(15, 1, 3)
    snapshots = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in params.values():
                p.copy_(torch.randn_like(p))
        snapshots.append({n: p.detach().clone() for n, p in params.items()})
        model.end_epoch(epoch, 3)
        if epoch < 3:  # the trained tensors stay until the last epoch
            assert all(torch.equal(params[n], snapshots[-1][n]) for n in params)
    state = model.training_state()
    assert set(state) == {f"gpa_sum.{n}" for n in params}
    for name, p in params.items():
        expected = sum(w * s[name] for w, s in zip(weights, snapshots))
        torch.testing.assert_close(p.detach(), expected, atol=1e-7, rtol=1e-6)
        assert torch.equal(state[f"gpa_sum.{name}"], p.detach())


@pytest.fixture(scope="module")
def args(pets, tiny_clip_path):
    """train.py's arguments of a 2-epoch fp32 PromptSRC run with GPA weights 0.47, 0.53."""

    def make(out):
        extra = ["TRAINER.PROMPTSRC.GPA_MEAN", "2.0", "TRAINER.PROMPTSRC.GPA_STD", "2.0"]
        return CASES["PromptSRC"].args(pets, tiny_clip_path, out, *extra)

    return make


def checkpoint(run, epoch):
    path = os.path.join(run, "prompt_learner", f"model.pth.tar-{epoch}")
    return torch.load(path, weights_only=True)


@pytest.mark.e2e
def test_a_killed_run_resumes_to_the_same_aggregate(args, tmp_path, one_thread):
    straight = str(tmp_path / "straight")
    cfg = train.setup_cfg(train.parse_args(map(str, args(straight))))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        train.set_random_seed(cfg.SEED)
        trainers.build_trainer(cfg).train()
    resumed = str(tmp_path / "resumed")
    kill_around_write("after", "checkpoint", 1, *args(resumed), env=ONE_THREAD)
    run_train(*args(resumed), env=ONE_THREAD)
    assert "model.pth.tar-1 (finished epochs: 1)" in read_log(resumed)
    final = [checkpoint(run, 2) for run in (resumed, straight)]
    first = checkpoint(straight, 1)
    for name, value in final[1]["state_dict"].items():
        assert torch.equal(final[0]["state_dict"][name], value), name
        # The last checkpoint holds the aggregate, which its training state repeats.
        assert torch.equal(final[1]["model_state"][f"gpa_sum.{name}"], value)
        # Epoch 1's checkpoint: its trained tensors θ1 and the aggregate so far, w1·θ1.
        weight = gaussian_weights(2, 2, 2)[0]
        assert torch.equal(
            first["model_state"][f"gpa_sum.{name}"],
            torch.zeros_like(value) + weight * first["state_dict"][name],
        )
    # The same test result.
    results = [
        text.split("=> result")[-1].split("* error")[0] for text in (read_log(resumed), log.getvalue())
    ]
    assert results[0] == results[1]
