"""Kill and resume through train.py: a run killed at an instant around one of its saves and
started again ends bit-identical to a run never interrupted, in every precision, and keeps its
routing statistics; `--resume` works into the run's own folder (CoOp's habit) and into another.

MoPD runs (it writes checkpoints and teacher statistics) with one CPU thread, so that sums are
ordered the same in every run and bitwise comparisons are meaningful. The uninterrupted
reference runs in this process, with train.py's own config and seeding (a subprocess run gives
the same bits, 10 times slower).
"""

import contextlib
import io
import json
import os
import shutil

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import train
import trainers
from tests.e2e import CASES, kill_around_write, read_log, run_train

pytestmark = pytest.mark.e2e

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PRECISIONS = {
    "fp32": ("TRAINER.PREC", "fp32"),
    "fp16": ("TRAINER.PREC", "fp16"),
    "amp-bf16": ("TRAINER.PREC", "amp", "TRAINER.AMP_DTYPE", "bfloat16"),
    "amp-fp16": ("TRAINER.PREC", "amp", "TRAINER.AMP_DTYPE", "float16"),
}
STATS = "teacher_stats.json"


def mopd_args(pets, clip_path, out, prec, *extra):
    return CASES["MoPD"].args(pets, clip_path, out, *PRECISIONS[prec], *extra)


@pytest.fixture(scope="module")
def straight(one_thread, pets, tiny_clip_path, tmp_path_factory):
    """`straight(prec)`: (folder, printed log) of a 2-epoch MoPD run never interrupted."""
    runs = {}

    def get(prec):
        if prec not in runs:
            out = str(tmp_path_factory.mktemp("straight") / prec)
            cfg = train.setup_cfg(train.parse_args(map(str, mopd_args(pets, tiny_clip_path, out, prec))))
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                train.set_random_seed(cfg.SEED)
                trainers.build_trainer(cfg).train()
            runs[prec] = out, log.getvalue()
        return runs[prec]

    return get


def stats(run_dir):
    with open(os.path.join(run_dir, STATS)) as f:
        return json.load(f)["records"]


def assert_same_run(resumed, reference):
    """Same final tensors (bitwise), the same test result and the same statistics records."""
    straight_dir, straight_log = reference
    final = [
        torch.load(os.path.join(d, "prompt_learner", "model.pth.tar-2"), weights_only=True)["state_dict"]
        for d in (resumed, straight_dir)
    ]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    results = [log.split("=> result")[-1].split("* error")[0] for log in (read_log(resumed), straight_log)]
    assert results[0] == results[1]
    assert stats(resumed) == stats(straight_dir)
    assert [(r["epoch"], r["split"]) for r in stats(resumed)] == [(1, "train"), (2, "train"), (2, "test")]


@pytest.mark.parametrize(
    "prec, when, name, nth, resumed_from",
    [
        # Epoch 2's checkpoint is complete, the marker naming it is not (a stray temporary
        # file), so the marker still names epoch 1's.
        ("fp16", "before", "checkpoint", 2, 1),
        # During the final evaluation: its statistics written, their CSV not.
        ("amp-bf16", "after", STATS, 3, 2),
        # Epoch 2's statistics written, its CSV and checkpoint not: the loss scale and its
        # growth counter must come back from epoch 1's checkpoint.
        ("amp-fp16", "after", STATS, 2, 1),
    ],
)
def test_killed_run_resumes_bit_exactly(
    pets, tiny_clip_path, straight, tmp_path, prec, when, name, nth, resumed_from
):
    out = str(tmp_path / "run")
    kill_around_write(when, name, nth, *mopd_args(pets, tiny_clip_path, out, prec), env=ONE_THREAD)
    run_train(*mopd_args(pets, tiny_clip_path, out, prec), env=ONE_THREAD)
    assert f"model.pth.tar-{resumed_from} (finished epochs: {resumed_from})" in read_log(out)
    assert_same_run(out, straight(prec))


def test_fp16_loss_scaling_logs_skipped_steps(straight):
    steps = [line for line in straight("amp-fp16")[1].splitlines() if line.startswith("epoch [")]
    assert all(" skipped " in line for line in steps)
    assert any(" skipped 1.0000 " in line for line in steps)  # the tiny CLIP overflows at first
    assert " skipped " not in straight("fp32")[1]


@pytest.fixture(scope="module")
def killed_after_epoch_1(pets, tiny_clip_path, tmp_path_factory):
    """An fp32 run killed right after epoch 1's checkpoint marker was written."""
    out = str(tmp_path_factory.mktemp("killed") / "run")
    kill_around_write("after", "checkpoint", 1, *mopd_args(pets, tiny_clip_path, out, "fp32"), env=ONE_THREAD)
    assert [(r["epoch"], r["split"]) for r in stats(out)] == [(1, "train")]
    return out


def test_resume_flag_into_the_same_folder(pets, tiny_clip_path, straight, killed_after_epoch_1, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(killed_after_epoch_1, out)
    run_train(*mopd_args(pets, tiny_clip_path, out, "fp32", "--resume", out), env=ONE_THREAD)
    assert_same_run(out, straight("fp32"))


def test_resume_into_another_folder_keeps_the_statistics(
    pets, tiny_clip_path, straight, killed_after_epoch_1, tmp_path
):
    out = str(tmp_path / "continued")
    run_train(*mopd_args(pets, tiny_clip_path, out, "fp32", "--resume", killed_after_epoch_1), env=ONE_THREAD)
    assert f"Found checkpoint in {killed_after_epoch_1}" in read_log(out)
    assert_same_run(out, straight("fp32"))
    assert not os.path.exists(os.path.join(killed_after_epoch_1, "prompt_learner", "model.pth.tar-2"))
