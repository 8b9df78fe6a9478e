"""Checkpoints know what they belong to: the trainers' own save_model / load_model refuse a
checkpoint of another trainer, another CLIP of the same width, other class-specific classes or
another prompt layout, with one error naming both sides; base -> new stays allowed where the
tensors do not depend on the classes, and a checkpoint without an identity (not written here)
is refused."""

import os
import shutil

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.clip_loading import build_tiny_clip, save_clip_state_dict
from clipprompt.learnable import CheckpointMismatch
from tests.e2e import PETS, TINY_OPTS

COOP = "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"
KGCOOP = "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"
MOPD = "configs/trainers/MoPD/vit_b16_c4_bs128/oxford_pets.yaml"
BASE, NEW = ["abyssinian", "beagle", "boxer"], ["chihuahua", "pug", "sphynx"]


def build(clip_path, trainer="CoOp", config=COOP, *opts, classnames=BASE):
    options = ["MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS, *opts]
    cfg = trainers.make_cfg(trainer, PETS, config, options, seed=1)
    return trainers.build_trainer(cfg, classnames, BASE + NEW)


def saved(trainer, folder):
    """`folder` holding `trainer`'s checkpoint of epoch 1, as training writes it."""
    trainer.save_model(0, str(folder))
    return str(folder)


def load(trainer, folder):
    trainer.load_model(folder, epoch=1)
    return trainer


@pytest.fixture(scope="module")
def coop_checkpoint(tiny_clip_path, tmp_path_factory):
    return saved(build(tiny_clip_path), tmp_path_factory.mktemp("coop"))


def test_checkpoint_records_its_identity(coop_checkpoint):
    ckpt = torch.load(os.path.join(coop_checkpoint, "prompt_learner", "model.pth.tar-1"), weights_only=True)
    identity = ckpt["identity"]
    assert identity["trainer"] == "CoOp" and identity["classnames"] == BASE
    assert identity["keys"] == {
        "TRAINER.COOP.N_CTX": 4,
        "TRAINER.COOP.CSC": False,
        "TRAINER.COOP.CLASS_TOKEN_POSITION": "end",
    }
    assert len(identity["backbone"]["fingerprint"]) == 16 and not identity["class_specific"]


def test_another_trainer_with_the_same_tensors_is_refused(coop_checkpoint, tiny_clip_path):
    kgcoop = build(tiny_clip_path, "KgCoOp", KGCOOP)  # also prompt_learner.ctx [4, 64]
    with pytest.raises(CheckpointMismatch, match=r"trainer CoOp \(checkpoint\) vs KgCoOp \(this model\)"):
        load(kgcoop, coop_checkpoint)


def test_another_clip_of_the_same_width_is_refused(coop_checkpoint, tmp_path):
    other = save_clip_state_dict(build_tiny_clip(seed=1), str(tmp_path / "other_clip.pt"))
    with pytest.raises(
        CheckpointMismatch,
        match=r"backbone '.*tiny_clip.pt' with fingerprint \w+ \(checkpoint\) vs '.*other_clip.pt'",
    ):
        load(build(other), coop_checkpoint)


def test_a_moved_clip_file_is_the_same_backbone(coop_checkpoint, tiny_clip_path, tmp_path):
    moved = shutil.copy(tiny_clip_path, tmp_path / "moved.pt")
    trainer = load(build(str(moved)), coop_checkpoint)
    assert trainer.finished_epochs == 1


def test_base_to_new_loads_shared_context_but_not_class_specific_context(
    coop_checkpoint, tiny_clip_path, tmp_path
):
    assert load(build(tiny_clip_path, classnames=NEW), coop_checkpoint).finished_epochs == 1
    csc = saved(build(tiny_clip_path, "CoOp", COOP, "TRAINER.COOP.CSC", "True"), tmp_path)
    new_csc = build(tiny_clip_path, "CoOp", COOP, "TRAINER.COOP.CSC", "True", classnames=NEW)
    message = r"class names differ \(the tensors are class-specific\): label 0 is 'abyssinian' \(checkpoint\) vs 'chihuahua'"
    with pytest.raises(CheckpointMismatch, match=message):
        load(new_csc, csc)  # same shape [3, 4, 64]: only the class names tell


def test_another_prompt_layout_is_refused(coop_checkpoint, tiny_clip_path):
    middle = build(tiny_clip_path, "CoOp", COOP, "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle")
    with pytest.raises(
        CheckpointMismatch, match=r"TRAINER.COOP.CLASS_TOKEN_POSITION 'end' \(checkpoint\) vs 'middle'"
    ):
        load(middle, coop_checkpoint)


def test_other_teachers_of_the_same_number_are_refused(tiny_clip_path, tmp_path):
    mopd = saved(build(tiny_clip_path, "MoPD", MOPD), tmp_path)
    teachers = list(trainers.make_cfg("MoPD", PETS, MOPD).DATASET.PROMPTS.TEACHER_TEMPLATES)
    other = build(
        tiny_clip_path,
        "MoPD",
        MOPD,
        "DATASET.PROMPTS.TEACHER_TEMPLATES",
        str(["a bad photo of a {}."] + teachers[1:]),
    )
    with pytest.raises(CheckpointMismatch, match="routed candidates .* DATASET.SOURCE_CONFIG"):
        load(other, mopd)


def test_checkpoint_without_identity_is_refused(coop_checkpoint, tiny_clip_path, tmp_path):
    shutil.copytree(coop_checkpoint, tmp_path / "other")
    path = tmp_path / "other" / "prompt_learner" / "model.pth.tar-1"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["identity"]
    torch.save(ckpt, path)
    with pytest.raises(
        CheckpointMismatch, match="records no identity: it was not written by this repository"
    ):
        load(build(tiny_clip_path), str(tmp_path / "other"))
