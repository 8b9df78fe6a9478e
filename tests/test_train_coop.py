"""End to end: train.py trains CoOp and evaluates ZeroshotCLIP with the tiny CLIP."""

import os

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.e2e import TINY_OPTS, evaluated_log, read_log, result_accuracy, run_train

COOP_B2N = "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"
PETS = "configs/datasets/oxford_pets.yaml"


def common(root, clip_path, output_dir, *extra):
    return [
        "--root",
        root,
        "--dataset-config-file",
        PETS,
        "--output-dir",
        output_dir,
        "MODEL.BACKBONE.NAME",
        clip_path,
        *TINY_OPTS,
        *extra,
    ]


@pytest.fixture(scope="module")
def coop_base_run(pets, tiny_clip_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("coop") / "train_base")
    run_train(
        "--seed",
        1,
        "--trainer",
        "CoOp",
        "--config-file",
        COOP_B2N,
        *common(
            pets,
            tiny_clip_path,
            out,
            "OPTIM.MAX_EPOCH",
            "2",
            "DATASET.NUM_SHOTS",
            "4",
            "DATASET.SUBSAMPLE_CLASSES",
            "base",
        ),
    )
    return out


def test_coop_trains_and_reports(coop_base_run):
    log = read_log(coop_base_run)
    assert log.rstrip().splitlines()[-1].startswith("Elapsed")
    assert 0 <= result_accuracy(log) <= 100
    assert "epoch [2/2]" in log
    ckpt = torch.load(os.path.join(coop_base_run, "prompt_learner", "model.pth.tar-2"), weights_only=True)
    assert list(ckpt["state_dict"]) == ["prompt_learner.ctx"]
    assert ckpt["state_dict"]["prompt_learner.ctx"].shape == (4, 64)
    for name in ("config.yaml", "invocations.jsonl"):
        assert os.path.exists(os.path.join(coop_base_run, name))


def test_coop_base_model_evaluates_on_new_classes(coop_base_run, pets, tiny_clip_path, tmp_path):
    out = str(tmp_path / "test_new")
    run_train(
        "--seed",
        1,
        "--trainer",
        "CoOp",
        "--config-file",
        COOP_B2N,
        "--eval-only",
        "--model-dir",
        coop_base_run,
        "--load-epoch",
        "2",
        *common(pets, tiny_clip_path, out, "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new"),
    )
    evaluated_log(out, 2, 9)  # 3 new classes x 3 test images
