"""Base-to-new end to end through train.py, for every trainer configuration of `tests.e2e.CASES`:
train on the base classes, then evaluate the finished model on the new classes (as
scripts/base2new.sh does). Trainer-specific checks of the same runs are in each trainer's test
module; the contract of the models themselves is in test_contract.py."""

import json
import os
import re

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.e2e import CASES, evaluated_log, read_log, run_train

pytestmark = pytest.mark.e2e

# Routing statistics each router writes (MoCoOp's experts, MoPD's teachers).
STATS = {"MoCoOp": "expert_stats.json", "MoPD": "teacher_stats.json"}


def result_total(log):
    """Test images counted by the log's last result block."""
    return int(re.findall(r"=> result\n\* total: ([\d,]+)", log)[-1])


def learnable_names(log):
    """The learnable tensors the trainer reported when it built its model."""
    return re.search(r"Learnable tensors \([\d,]+ values\): (.*)\n", log)[1].split(", ")


def coop_parse_test_res(log, end_signal):
    """The accuracy CoOp's parse_test_res.py reads from a log: the last `* accuracy: X%` line
    after the line `end_signal` ("Finished training" by default, "=> result" with --test-log),
    None when it finds none."""
    found, started = None, False
    for line in log.splitlines():
        started = started or line.strip() == end_signal
        if started and (m := re.search(r"\* accuracy: ([\.\deE+-]+)%", line)):
            found = float(m[1])
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_train_base_then_evaluate_new(name, base_run, pets, dtd, tiny_clip_path, tmp_path):
    case = CASES[name]
    train_dir = base_run(name)
    log = read_log(train_dir)
    assert log.rstrip().splitlines()[-1].startswith("Elapsed")
    steps = [line for line in log.splitlines() if line.startswith("epoch [")]
    assert steps[-1].startswith("epoch [2/2] batch [3/3]")  # 3 base classes x 4 shots, batch 4
    # The checkpoint holds exactly the tensors the trainer optimised, and nothing of CLIP.
    ckpt = torch.load(os.path.join(train_dir, "prompt_learner", "model.pth.tar-2"), weights_only=True)
    assert sorted(ckpt["state_dict"]) == sorted(learnable_names(log))
    assert (ckpt["epoch"], ckpt["max_epoch"], ckpt["trainer"]) == (2, 2, case.trainer)
    assert result_total(log) == 9  # 3 base classes x 3 test images
    for name_file in ("config.yaml", "invocations.jsonl"):
        assert os.path.exists(os.path.join(train_dir, name_file))

    out = str(tmp_path / "test_new")
    root = {"pets": pets, "dtd": dtd}[case.data]
    run_train(
        *case.args(root, tiny_clip_path, out, "DATASET.SUBSAMPLE_CLASSES", "new"),
        "--eval-only",
        "--model-dir",
        train_dir,
    )
    evaluated_log(out, 2, 9)  # 3 new classes x 3 test images
    # CoOp's parse_test_res.py: its default mode reads training logs, --test-log evaluation-only ones.
    last = float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])
    assert coop_parse_test_res(log, "Finished training") == last
    new_log = read_log(out)
    assert coop_parse_test_res(new_log, "Finished training") is None
    assert coop_parse_test_res(new_log, "=> result") == float(
        re.findall(r"\* accuracy: ([\d.]+)%", new_log)[-1]
    )
    if case.trainer in STATS:
        with open(os.path.join(train_dir, STATS[case.trainer])) as f:
            records = json.load(f)["records"]
        assert [(r["epoch"], r["split"], r["count"]) for r in records] == [
            (1, "train", 12), (2, "train", 12), (2, "test", 9)
        ]  # fmt: skip
        for record in records:
            assert sum(record["selection_share"]) == pytest.approx(1.0)
            assert sum(record["mean_weight"]) == pytest.approx(1.0)
        with open(os.path.join(out, STATS[case.trainer])) as f:
            assert [(r["epoch"], r["split"], r["count"]) for r in json.load(f)["records"]] == [(2, "test", 9)]
