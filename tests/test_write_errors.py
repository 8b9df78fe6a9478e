"""Write errors (a full disk, a read-only output folder) end train.py, predict.py, tools.export and
tools.results with one line naming the file and what to do, no traceback, and what was written
before intact. A full disk is /dev/full (ENOSPC from the kernel) put in place of the file being
written; a read-only file system is simulated (EROFS), since root writes into read-only folders."""

import builtins
import os
import re
import subprocess
import sys

import pytest

from clipprompt import atomic
from tests.conftest import ROOT

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
if not os.path.exists("/dev/full"):
    pytest.skip("needs /dev/full (Linux) to fill a disk", allow_module_level=True)

from tests.e2e import CASES, run_train
from trainers.runs.checkpoints import latest_checkpoint, read_checkpoint

# train.py where the atomic write of files named NAME goes to /dev/full: argv is NAME ARGS...
DISK_FULL_FOR = """
import builtins, os, runpy, sys
import clipprompt.atomic

name = sys.argv.pop(1)


def open_full_for(file, mode="r", *args, **kwargs):
    if os.path.basename(file).startswith(f".{name}."):
        file = "/dev/full"
    return builtins.open(file, mode, *args, **kwargs)


clipprompt.atomic.open = open_full_for
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""

# train.py with its output folder on a read-only file system: argv is FOLDER ARGS...
READ_ONLY = """
import errno, os, runpy, sys

folder = sys.argv.pop(1)
real_open, real_makedirs = os.open, os.makedirs


def refused(path):
    return os.path.abspath(path).startswith(folder)


def read_only_open(path, flags, *args, **kwargs):
    if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, flags, *args, **kwargs)


def read_only_makedirs(path, *args, **kwargs):
    if refused(path) and not os.path.isdir(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_makedirs(path, *args, **kwargs)


os.open, os.makedirs = read_only_open, read_only_makedirs
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def coop_args(pets, clip_path, out):
    return CASES["CoOp"].args(pets, clip_path, out, "DATASET.SUBSAMPLE_CLASSES", "base")


@pytest.mark.e2e
def test_a_full_disk_ends_train_py_with_one_line_and_the_last_checkpoint_intact(
    pets, tiny_clip_path, tmp_path
):
    out = tmp_path / "run"
    proc = run_train(
        "model.pth.tar-2",
        *coop_args(pets, tiny_clip_path, str(out)),
        check=False,
        python_args=("-c", DISK_FULL_FOR),
    )
    checkpoint = out / "prompt_learner" / "model.pth.tar-2"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {checkpoint}: No space left on device (free space on that file system, or write "
        "elsewhere). Files written before are intact. Then run the same command again (a run resumes from its "
        "last checkpoint)."
    )
    folder = str(out / "prompt_learner")
    assert latest_checkpoint(folder).endswith("model.pth.tar-1") and read_checkpoint(
        latest_checkpoint(folder)
    )
    assert sorted(os.listdir(folder)) == [
        "checkpoint",
        "model.pth.tar-1",
    ]  # no partial file, no stray temporary


@pytest.mark.e2e
def test_a_read_only_output_folder_is_one_line_before_anything_runs(pets, tiny_clip_path, tmp_path):
    out = tmp_path / "readonly" / "run"
    code = [
        sys.executable,
        "-c",
        READ_ONLY,
        str(tmp_path / "readonly"),
        *coop_args(pets, tiny_clip_path, str(out)),
    ]
    proc = subprocess.run(
        list(map(str, code)), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip() == (
        f"error: cannot write {out}: Read-only file system (the file system is mounted read-only: write "
        "elsewhere). Files written before are intact. Then run the same command again (a run resumes from "
        "its last checkpoint)."
    )


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write (clipprompt.atomic) goes to /dev/full."""

    def open_full(file, mode="r", *args, **kwargs):
        return builtins.open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", open_full, raising=False)


def test_the_tools_report_a_full_disk_in_one_line(pets, tiny_clip_path, tmp_path, full_disk):
    import predict
    import trainers
    from tests.e2e import PETS, TINY_OPTS
    from tests.saved_runs import saved_run
    from tools.export import write
    from tools.results import report
    from tools.results.synthetic import write_log

    opts = ["MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS, "DATASET.SUBSAMPLE_CLASSES", "base"]
    cfg = trainers.make_cfg("CoOp", PETS, "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", opts, root=pets)
    with pytest.MonkeyPatch.context() as unpatched:  # the run itself is written to a disk with space
        unpatched.delattr(atomic, "open")
        saved_run(cfg, str(tmp_path / "run"))
    image = os.path.join(
        pets, "oxford_pets", "images", min(os.listdir(os.path.join(pets, "oxford_pets", "images")))
    )
    full = "No space left on device (free space on that file system, or write elsewhere). Files written before are intact."
    out = tmp_path / "preds.csv"
    with pytest.raises(
        SystemExit, match="^" + re.escape(f"error: cannot write {out}: {full} Run the same command again")
    ):
        predict.main(["--model-dir", str(tmp_path / "run"), "--output", str(out), image])
    out = tmp_path / "model.safetensors"
    with pytest.raises(
        SystemExit, match="^" + re.escape(f"error: cannot write {out}: {full} Run the same command again")
    ):
        write.main(["--model-dir", str(tmp_path / "run"), "--out", str(out)])
    write_log(tmp_path / "tree" / "fewshot" / "dtd" / "shots_1" / "CoOp" / "c" / "seed1", correct=500)
    tables = tmp_path / "tables"
    with pytest.raises(
        SystemExit,
        match="^" + re.escape(f"error: cannot write {tables}/fewshot.csv: {full} Or pass --csv-dir"),
    ):
        report.main([str(tmp_path / "tree"), "--csv-dir", str(tables)])


def test_a_checkpoint_that_fills_the_disk_is_a_write_error_naming_it(tmp_path, full_disk):
    import torch

    from trainers.runs.checkpoints import save_checkpoint

    # torch.save raises a RuntimeError ("unexpected pos") for the failed write of a large tensor.
    with pytest.raises(atomic.WriteError) as err:
        save_checkpoint({"epoch": 1, "state_dict": {"ctx": torch.ones(100_000)}}, str(tmp_path))
    assert (err.value.filename, err.value.strerror) == (
        str(tmp_path / "model.pth.tar-1"),
        "No space left on device",
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.e2e
def test_a_clip_that_cannot_be_loaded_ends_train_py_with_one_line(pets, tmp_path):
    """A missing CLIP file (as a missing download) is one line on stderr naming the file and what
    to do, and the same line in the run's log: no traceback."""
    missing = tmp_path / "no_such_clip.pt"
    out = tmp_path / "run"
    proc = run_train(*coop_args(pets, str(missing), str(out)), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last, last
    assert last in (out / "log.txt").read_text(encoding="utf-8")
