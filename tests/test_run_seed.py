"""A run started without --seed (SEED < 0): its first start draws a seed and records it in the run
folder, later starts use it (the same few-shot sample), and a folder of an older run whose seed
was not recorded is refused rather than resumed on another sample."""

import json
import os
import re
import shutil

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.e2e import CASES, read_log, run_train
from trainers.runs.folder import run_seed


@pytest.mark.e2e
def test_starts_without_a_seed_share_the_seed_of_the_first(pets, tiny_clip_path, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pets, data)  # the few-shot sample is cached next to the data
    out = tmp_path / "run"
    args = CASES["CoOp"].args(str(data), tiny_clip_path, str(out), "--no-train", seed=-1)
    run_train(*args)
    with open(out / "seed.json") as f:
        seed = json.load(f)["seed"]
    sample = data / "oxford_pets" / "split_fewshot" / f"shot_4-seed_{seed}.json"
    first = read_log(str(out))
    assert f"SEED -1: drew seed {seed} for this run, recorded in {out / 'seed.json'}" in first
    assert f"Saved few-shot sample to {sample}" in first
    run_train(*args)
    second = read_log(str(out)).split("==== train.py start")[-1]
    assert f"SEED -1: using seed {seed}, drawn at this run's first start" in second
    assert f"Reading few-shot sample from {sample}" in second
    with open(out / "invocations.jsonl") as f:
        assert [json.loads(line)["seed"] for line in f] == [seed, seed]


def test_an_unrecorded_seed_is_not_resumed_on_another_sample(tmp_path):
    run = tmp_path / "run"
    os.makedirs(run / "prompt_learner")
    (run / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    saved = "SEED: -1\nOPTIM:\n  LR: 0.002\n"
    with pytest.raises(
        RuntimeError, match=re.escape(f"{run} holds a run started without --seed whose seed was not")
    ):
        run_seed(str(run), -1, saved)
    assert run_seed(str(run), 3, saved) == (3, None)  # a seed given: the usual config comparison decides
    assert not (run / "seed.json").exists()
