"""The sweep with the real train.py (tiny CLIP, generated Oxford Pets and DTD, CPU): base-to-new
for CoOp and MoCoOp on two datasets and two seeds with two workers gives the accuracies of the
sequential scripts; a train.py killed mid-run and a run made to fail are reported, their
evaluations blocked, while the others finish, and re-running redoes only them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("dassl", reason="the sweep runs train.py, which needs Dassl")

pytestmark = pytest.mark.e2e

TRAINERS = {"CoOp": "vit_b16_ctxv1.yaml", "MoCoOp": "paper_vit_b16_ep25.yaml"}
DATASETS = ("oxford_pets", "dtd")
SEEDS = ("1", "2")
KILLED = "base2new/train_base/oxford_pets/shots_4/CoOp/tiny/seed2"
FAILING = "base2new/train_base/dtd/shots_4/MoCoOp/tiny/seed2"
# The interpreter the sweep runs train.py with (--python): the real one, except that the run
# FAILING fails while the file `fail` exists in the repository.
FAILING_PYTHON = f"""#!{sys.executable}
import os, sys
if os.path.exists("fail") and sys.argv[sys.argv.index("--output-dir") + 1].endswith("{FAILING}"):
    sys.exit("RuntimeError: injected failure")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_clip_path, pets, dtd):
    """A scratch repository: the code linked, configs copied plus a `tiny` config per trainer
    (the tiny CLIP, 32 px, 2 epochs), and one data root holding both datasets."""
    root = tmp_path_factory.mktemp("sweep_e2e")
    for name in ("train.py", "trainers", "datasets", "clipprompt", "tools", "scripts"):
        (root / name).symlink_to(Path(ROOT) / name)
    shutil.copytree(Path(ROOT) / "configs", root / "configs")
    for trainer, base in TRAINERS.items():
        (root / f"configs/trainers/{trainer}/tiny.yaml").write_text(
            f"_BASE_: {base}\nMODEL:\n  BACKBONE:\n    NAME: {tiny_clip_path}\nINPUT:\n  SIZE: (32, 32)\n"
            "DATALOADER:\n  NUM_WORKERS: 0\n  TRAIN_X:\n    BATCH_SIZE: 4\n  TEST:\n    BATCH_SIZE: 8\n"
            "OPTIM:\n  MAX_EPOCH: 2\n  WARMUP_EPOCH: 1\nTRAINER:\n  PREC: fp32\n"
        )
    (root / "data").mkdir()
    (root / "data/oxford_pets").symlink_to(Path(pets) / "oxford_pets")
    (root / "data/dtd").symlink_to(Path(dtd) / "dtd")
    (root / "python").write_text(FAILING_PYTHON)
    (root / "python").chmod(0o755)
    return root


def env():
    # CPU jobs (no GPU visible), one thread each for the scripts and the sweep alike.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def sweep(repo, *extra, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "tools.sweep",
        "--protocol",
        "base2new",
        "--trainers",
        "CoOp:tiny",
        "MoCoOp:tiny",
    ]
    cmd += ["--datasets", *DATASETS, "--seeds", *SEEDS, "--shots", "4", "--data", "data", "--output", "sweep"]
    cmd += ["--jobs-per-gpu", "2", "--python", "./python", *extra]
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out, err


def kill_when_running(repo, proc, path, attempt):
    """SIGKILL the train.py of run `path` once the sweep records `attempt` of it as running."""
    state = repo / "sweep/sweep/state" / f"{path}.json"
    deadline = time.monotonic() + 300
    while True:
        rec = json.loads(state.read_text()) if state.exists() else {}
        if rec.get("status") == "running" and rec["attempt"] == attempt:
            break
        assert proc.poll() is None and time.monotonic() < deadline, f"the sweep never started {path}"
        time.sleep(0.05)
    os.kill(rec["pid"], signal.SIGKILL)


def invocations(repo):
    """{run path: number of train.py invocations it recorded}."""
    return {
        str(p.parent.relative_to(repo / "sweep")): len(p.read_text().splitlines())
        for p in (repo / "sweep/base2new").rglob("invocations.jsonl")
    }


def record(repo, path):
    return json.loads((repo / "sweep/sweep/state" / f"{path}.json").read_text())


def test_sweep_equals_sequential_scripts_and_recovers(repo):
    from tools.results.runlog import read_run

    # The sequential scripts, one process per trainer (each runs its 8 runs in order).
    scripts = [
        subprocess.Popen(
            ["bash", "scripts/all_base2new.sh", trainer, "tiny"],
            cwd=repo,
            env=env()
            | {"DATA": "data", "OUTPUT": "sequential", "DATASETS": " ".join(DATASETS), "SEEDS": "1 2"}
            | {"SHOTS": "4", "PYTHON": sys.executable},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for trainer in TRAINERS
    ]
    for proc in scripts:
        assert proc.wait(timeout=900) == 0, proc.stderr.read()

    # The run FAILING fails on both attempts; the run KILLED is killed on both.
    (repo / "fail").write_text("")
    first = sweep(repo, "--retries", "1", "--no-report", wait=False)
    kill_when_running(repo, first, KILLED, 1)
    kill_when_running(repo, first, KILLED, 2)
    out, err = first.communicate(timeout=900)
    assert first.returncode == 1, err
    assert f"FAILED after 2 attempt(s) (exit status -9): {KILLED}" in err
    assert f"FAILED after 2 attempt(s) (exit status 1): {FAILING}" in err
    rec = record(repo, FAILING)
    assert (rec["status"], rec["attempt"]) == ("failed", 2) and "injected failure" in rec["log_tail"]
    for path in (KILLED, FAILING):
        assert record(repo, path.replace("train_base", "test_new"))["status"] == "blocked"
    assert len(set(invocations(repo)) - {KILLED}) == 12  # every other run finished

    (repo / "fail").unlink()
    code, out, err = sweep(repo)  # only those two runs and their evaluations, then the tables
    assert code == 0, err
    ran = invocations(repo)
    assert len(ran) == 16 and {n for p, n in ran.items() if p != KILLED} == {1}
    assert "Base-to-new generalisation" in out and (repo / "sweep/tables/base2new.csv").exists()

    sequential = {p: read_run(repo / "sequential" / p).accuracy for p in ran}
    swept = {p: read_run(repo / "sweep" / p).accuracy for p in ran}
    assert None not in swept.values() and swept == sequential
