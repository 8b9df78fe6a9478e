"""Damaged run folders: a truncated checkpoint is named as damaged with what to do (predict.py
and tools.export say so without a traceback), and a run whose `checkpoint` marker is missing
resumes from its newest checkpoint that loads instead of training over its checkpoints."""

import os
import re
import shutil

import pytest
import torch

from trainers.runs.checkpoints import latest_checkpoint, read_checkpoint, save_checkpoint

WHAT_TO_DO = (
    "): delete it and run the training command again, which resumes from the newest checkpoint that loads"
)


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def epochs(folder, count):
    for epoch in range(1, count + 1):
        save_checkpoint({"epoch": epoch, "state_dict": {"ctx": torch.full((3,), float(epoch))}}, str(folder))


def test_a_truncated_checkpoint_is_named_damaged_with_what_to_do(tmp_path):
    epochs(tmp_path, 2)
    path = str(tmp_path / "model.pth.tar-2")
    truncate(path)
    with pytest.raises(RuntimeError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert message.startswith(
        f"Checkpoint {path} is damaged or incomplete (RuntimeError: PytorchStreamReader failed"
    )
    assert WHAT_TO_DO in message and "CoOp-family" not in message
    open(path, "wb").close()  # empty
    with pytest.raises(
        RuntimeError, match=re.escape("is damaged or incomplete (EOFError: no data" + WHAT_TO_DO)
    ):
        read_checkpoint(path)


def test_without_a_marker_evaluation_says_what_to_do(tmp_path):
    epochs(tmp_path, 3)
    os.unlink(tmp_path / "checkpoint")
    with pytest.raises(FileNotFoundError) as err:
        latest_checkpoint(str(tmp_path))
    assert (
        f"marker {tmp_path / 'checkpoint'} is missing, but {tmp_path} holds the checkpoints of epochs 1, 2, 3"
        in str(err.value)
    )
    assert "run the training command again" in str(err.value) and "--load-epoch" in str(err.value)


def test_the_marker_is_recovered_from_the_newest_checkpoint_that_loads(tmp_path, capsys):
    from trainers.runs.checkpoints import recover_marker

    epochs(tmp_path, 3)
    (tmp_path / "checkpoint").write_text("model.pth.tar-4\n")  # a marker copied from elsewhere
    truncate(tmp_path / "model.pth.tar-3")
    capsys.readouterr()
    recover_marker(str(tmp_path))
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.pth.tar-2")
    assert (
        f"The checkpoint marker {tmp_path / 'checkpoint'} names model.pth.tar-4, which is not there: resuming "
        "from the newest checkpoint that loads, model.pth.tar-2 (epoch 2) (model.pth.tar-3 did not load)"
    ) in capsys.readouterr().out


# ---------------------------------------------------------------------------------- the tools


@pytest.fixture
def damaged_run(pets, tiny_clip_path, tmp_path):
    """A saved CoOp run whose last checkpoint was cut in half, and an image to classify."""
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from PIL import Image

    import trainers
    from tests.e2e import PETS, TINY_OPTS
    from tests.saved_runs import saved_run

    opts = ["MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS, "DATASET.SUBSAMPLE_CLASSES", "base"]
    cfg = trainers.make_cfg("CoOp", PETS, "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", opts, root=pets)
    run = tmp_path / "run"
    saved_run(cfg, str(run))
    checkpoint = run / "prompt_learner" / f"model.pth.tar-{cfg.OPTIM.MAX_EPOCH}"
    truncate(checkpoint)
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (0, 120, 200)).save(image)
    return str(run), str(checkpoint), str(image)


def test_predict_and_export_report_a_damaged_checkpoint_without_a_traceback(damaged_run, tmp_path):
    import predict
    from tools.export import write

    run, checkpoint, image = damaged_run
    expected = f"error: Checkpoint {checkpoint} is damaged or incomplete ("
    with pytest.raises(SystemExit) as err:
        predict.main(["--model-dir", run, "--output", str(tmp_path / "preds.csv"), image])
    assert str(err.value).startswith(expected) and WHAT_TO_DO in str(err.value)
    with pytest.raises(SystemExit) as err:
        write.main(["--model-dir", run, "--out", str(tmp_path / "model.safetensors")])
    assert str(err.value).startswith(expected) and WHAT_TO_DO in str(err.value)


# ---------------------------------------------------------------------------------- train.py


@pytest.mark.e2e
def test_a_finished_run_without_its_marker_is_re_evaluated_not_trained_again(
    base_run, pets, tiny_clip_path, tmp_path
):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from tests.e2e import CASES, read_log, run_train

    out = tmp_path / "run"
    shutil.copytree(base_run("CoOp"), out)
    os.unlink(out / "prompt_learner" / "checkpoint")
    before = (out / "prompt_learner" / "model.pth.tar-1").read_bytes()
    run_train(*CASES["CoOp"].args(pets, tiny_clip_path, str(out), "DATASET.SUBSAMPLE_CLASSES", "base"))
    last_start = read_log(str(out)).split("==== train.py start")[-1]
    marker = out / "prompt_learner" / "checkpoint"
    assert (
        f"The checkpoint marker {marker} is missing: resuming from the newest checkpoint that loads, model.pth.tar-2"
        in last_start
    )
    assert "model.pth.tar-2 (finished epochs: 2)" in last_start and "epoch [" not in last_start
    assert "=> result" in last_start and marker.read_text() == "model.pth.tar-2\n"
    assert (out / "prompt_learner" / "model.pth.tar-1").read_bytes() == before
