"""A run's output folder through train.py: which starts it accepts (a failed start never blocks
it, moved data and output trees resume, another run is refused with the keys that differ), its
one log.txt as CoOp's parse_test_res.py reads it, the provenance it records, and the warnings
it prints."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import train
from tests.conftest import ROOT
from tests.e2e import CASES, kill_around_write, read_log, run_train
from tools.results.runlog import newest_log, read_run

pytestmark = pytest.mark.e2e


def coop_args(root, clip_path, out, *extra):
    """The arguments of the session's CoOp base run (conftest's `base_run`), `extra` appended."""
    return CASES["CoOp"].args(root, clip_path, out, "DATASET.SUBSAMPLE_CLASSES", "base", *extra)


@pytest.fixture
def finished(base_run):
    return base_run("CoOp")


def results(log):
    return re.findall(r"\* accuracy: ([\d.]+)%", log)


# ----------------------------------------------------------------------------- starting a folder


def test_failed_start_does_not_block_the_folder(pets, tiny_clip_path, tmp_path):
    out = str(tmp_path / "run")
    proc = run_train(*coop_args(str(tmp_path / "wrong"), tiny_clip_path, out), check=False)
    assert proc.returncode != 0 and f"DATASET.ROOT {tmp_path / 'wrong'} not found" in proc.stderr
    run_train(*coop_args(pets, tiny_clip_path, out))  # the cause fixed, the same command
    assert len(results(read_log(out))) == 1


def test_moved_data_and_output_trees_resume(finished, pets, tiny_clip_path, tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "moved" / "seed1")
    shutil.copytree(pets, data)
    shutil.copytree(finished, out)
    # Worker count, print frequency and determinism do not define the run either.
    extra = ("DATALOADER.NUM_WORKERS", "1", "TRAIN.PRINT_FREQ", "5", "DETERMINISTIC", "True")
    run_train(*coop_args(data, tiny_clip_path, out, *extra))
    log = read_log(out)
    assert "Resumed" in log and "model.pth.tar-2 (finished epochs: 2)" in log
    assert results(log) == results(read_log(finished)) * 2
    with open(os.path.join(out, "invocations.jsonl")) as f:
        starts = [json.loads(line) for line in f]
    assert [(s["deterministic"], s["cpu_threads"]) for s in starts][-1] == (True, 1)
    assert starts[0]["deterministic"] is False
    assert "'deterministic': True" in log.split("==== train.py start")[-1]


def test_another_run_is_refused_naming_the_keys(finished, pets, tiny_clip_path, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    args = coop_args(pets, tiny_clip_path, out, "OPTIM.LR", "0.1", "DATASET.NUM_SHOTS", "2")
    cfg = train.setup_cfg(train.parse_args(map(str, args)))
    expected = (
        r"holds a run with a different configuration .*: DATASET.NUM_SHOTS: 4 -> 2; OPTIM.LR: 0.002 -> 0.1"
    )
    with pytest.raises(RuntimeError, match=expected + "; it has prompt_learner/checkpoint"):
        train.check_output_dir(cfg)


def test_folder_without_checkpoint_or_result_restarts_with_another_config(pets, tiny_clip_path, tmp_path):
    out = str(tmp_path / "run")
    # The first start wrote its config, then died before its first checkpoint.
    kill_around_write("after", "config.yaml", 1, *coop_args(pets, tiny_clip_path, out, "OPTIM.LR", "0.1"))
    run_train(*coop_args(pets, tiny_clip_path, out))
    assert "replaces it (OPTIM.LR: 0.1 -> 0.002)" in read_log(out)
    with open(os.path.join(out, "config.yaml")) as f:
        assert yaml.safe_load(f)["OPTIM"]["LR"] == 0.002


# ----------------------------------------------------------------------------- log.txt

ACCURACY = re.compile(r"\* accuracy: ([-+.\deE]+)%")


def coop_parse_test_res(directory, end_signal="Finished training"):
    """The rule of CoOp's parse_test_res.py, re-implemented: for each seed folder of `directory`,
    read its `log.txt`; from the first line equal to `end_signal` on, the last `* accuracy: X%`
    line is the seed's result; a seed without one is left out of the table."""
    table = {}
    for seed in sorted(os.listdir(directory)):
        with open(os.path.join(directory, seed, "log.txt")) as f:
            lines = [line.strip() for line in f]
        start = lines.index(end_signal) if end_signal in lines else len(lines)
        found = [m[1] for line in lines[start:] if (m := ACCURACY.search(line))]
        if found:
            table[seed] = float(found[-1])
    return table


def truncated_copy(run_dir, dst):
    """`dst` as `run_dir` was when killed after epoch 1: its checkpoint and its log so far."""
    os.makedirs(os.path.join(dst, "prompt_learner"))
    shutil.copy(
        os.path.join(run_dir, "prompt_learner", "model.pth.tar-1"), os.path.join(dst, "prompt_learner")
    )
    with open(os.path.join(dst, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-1\n")
    log = read_log(run_dir)
    with open(os.path.join(dst, "log.txt"), "w") as f:
        f.write(log[: log.index("epoch [2/2]")])


def test_every_seed_is_visible_to_coop_parser(finished, pets, tiny_clip_path, tmp_path):
    seeds = tmp_path / "CoOp"
    shutil.copytree(finished, seeds / "seed1")  # finished, untouched
    truncated_copy(finished, str(seeds / "seed2"))  # interrupted, then resumed
    run_train(*coop_args(pets, tiny_clip_path, str(seeds / "seed2")))
    shutil.copytree(finished, seeds / "seed3")  # finished, then run again (re-evaluated)
    run_train(*coop_args(pets, tiny_clip_path, str(seeds / "seed3")))
    table = coop_parse_test_res(str(seeds))
    assert sorted(table) == ["seed1", "seed2", "seed3"]
    for seed, accuracy in table.items():
        assert newest_log(seeds / seed).name == "log.txt"
        assert read_run(seeds / seed).accuracy == pytest.approx(accuracy, abs=0.05)
    assert read_log(str(seeds / "seed2")).count("==== train.py start") == 2  # the resume appended


def test_newest_log_is_log_txt_unless_an_older_version_continued_it(tmp_path):
    def write(name, text):
        (tmp_path / name).write_text(text)

    write("log.txt", "Dassl's first start\n")
    write("log.txt-2024-05-01-12-00-00", "=> result\n* accuracy: 50.0%\n")
    assert newest_log(tmp_path).name == "log.txt-2024-05-01-12-00-00"  # no start line: oldest
    write("log.txt", "first\n==== train.py start 2024-05-02-08-00-00 ====\n=> result\n* accuracy: 60.0%\n")
    assert newest_log(tmp_path).name == "log.txt"
    assert read_run(tmp_path).accuracy == 60.0
    write("log.txt-2024-05-03-09-00-00", "killed\n")
    assert newest_log(tmp_path).name == "log.txt-2024-05-03-09-00-00"


# ----------------------------------------------------------------------------- provenance, warnings


def test_run_records_the_data_it_trained_on(finished):
    with open(os.path.join(finished, "data_summary.json")) as f:
        summary = json.load(f)
    assert (summary["dataset"], summary["num_shots"], summary["effective_shots"]) == ("OxfordPets", 4, 4)
    assert summary["short_classes"] == {} and sum(summary["train_images_per_class"].values()) == 12
    with open(os.path.join(finished, "invocations.jsonl")) as f:
        assert json.loads(f.readline())["deterministic"] is False


def test_only_the_two_known_warnings_are_filtered():
    # Importing train.py installs the filters; the version check of `outdated` runs in a
    # background thread, so wait for it before looking at stderr.
    code = (
        "import threading, warnings\n"
        "import train\n"
        "for t in threading.enumerate():\n"
        "    if t is not threading.current_thread(): t.join()\n"
        "warnings.warn('pkg_resources is deprecated as an API', UserWarning)\n"
        "warnings.warn('Failed to check for latest version of package.')\n"
        "warnings.warn('another warning stays visible')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert "another warning stays visible" in proc.stderr
    assert "pkg_resources" not in proc.stderr and "Failed to check" not in proc.stderr
