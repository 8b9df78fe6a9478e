"""python -m tools.sweep with a stand-in train.py in a scratch repository (no Dassl, data or model):
the plan is the scripts' grid, the local pool pins jobs to GPUs and does not wait in waves, Ctrl-C
stops the jobs and a re-run continues, --status. The Slurm backend is tests/test_sweep_slurm.py;
the same sweep with the real train.py and the tiny CLIP is tests/test_sweep_e2e.py."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.sweep_fakes import B2N, B2N_ARGS, calls, make_repo, record, sweep
from tools.protocols import Grid, plan
from tools.sweep.progress import Eta
from tools.sweep.slurm import parse_time

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


@pytest.mark.e2e
def test_plan_is_the_scripts_grid(repo):
    proc = sweep(repo, *B2N_ARGS, "--dry-run", "--python", "python3")
    assert proc.returncode == 0, proc.stderr
    planned = [line.strip() for line in proc.stdout.splitlines() if line.startswith(" ")]
    scripts = subprocess.run(
        ["bash", "scripts/all_base2new.sh", "CoOp", "v"],
        cwd=repo,
        # PYTHON as given to the sweep (the caller's PYTHON, e.g. from `make test`, must not leak in).
        env={**os.environ, "PYTHON": "python3", "DATA": "data", "DRY_RUN": "1", "SEEDS": "1 2"}
        | {"DATASETS": "dtd eurosat"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert planned == scripts.stdout.splitlines() and len(planned) == 8
    assert "(after output/" + B2N.format("train_base", "dtd", 1) + ")" in proc.stdout
    assert not (repo / "output").exists() and not calls(repo)


def test_failed_run_retried_reported_and_its_evaluation_blocked(repo):
    failing = B2N.format("train_base", "dtd", 2)
    proc = sweep(repo, *B2N_ARGS, "--jobs-per-gpu", "2", FAKE_FAIL=failing)
    assert proc.returncode == 1
    assert f"FAILED after 2 attempt(s) (exit status 3): {failing}" in proc.stderr
    assert "[sweep] 6/8 done | 0 running | 1 failed | 1 blocked | elapsed " in proc.stderr  # the last line
    assert "RuntimeError: injected failure" in proc.stderr
    assert (
        f"blocked (its training run {failing} did not finish): {B2N.format('test_new', 'dtd', 2)}"
        in proc.stderr
    )
    done = {c["out"] for c in calls(repo)}
    assert len(done) == 6 and f"output/{B2N.format('test_new', 'dtd', 2)}" not in done  # the others finished
    rec = record(repo, failing)
    assert (rec["status"], rec["exit_code"], rec["attempt"]) == ("failed", 3, 2)
    assert "RuntimeError: injected failure" in rec["log_tail"]
    assert (repo / rec["log"]).read_text().count("=== ") == 2  # both attempts' output, kept

    status = sweep(repo, *B2N_ARGS, "--status")
    assert (
        "| CoOp:v           |      6 |         0 |        0 |        1 |         1 |         0 |"
        in status.stdout
    )
    assert (
        f"failed: {failing}: exit status 3 after 2 attempt(s): RuntimeError: injected failure"
        in status.stdout
    )

    again = sweep(repo, *B2N_ARGS)  # fixed: only the failed run and its evaluation run
    assert again.returncode == 0, again.stderr
    assert [c["out"] for c in calls(repo)[6:]] == [
        f"output/{failing}",
        f"output/{B2N.format('test_new', 'dtd', 2)}",
    ]


def test_gpu_pinning_and_no_waves(repo):
    """Two fake GPUs, two jobs each: every job sees one GPU, never more than two jobs on a GPU,
    and the jobs beyond the first four start as slots free up while a long one still runs."""
    args = ("--protocol", "fewshot", "--trainers", "CoOp:v", "--datasets", "dtd", "--shots", "1", "--seeds")
    proc = sweep(
        repo,
        *args,
        *map(str, range(1, 8)),
        "--gpus",
        "0,1",
        "--jobs-per-gpu",
        "2",
        FAKE_SLEEP="0.4",
        FAKE_LONG="seed1",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = calls(repo)
    assert len(jobs) == 7 and {j["cuda"] for j in jobs} == {"0", "1"}
    for gpu in "01":
        on_gpu = [j for j in jobs if j["cuda"] == gpu]
        assert max(sum(o["start"] <= j["start"] < o["end"] for o in on_gpu) for j in on_gpu) <= 2
    long = next(j for j in jobs if j["out"].endswith("seed1"))
    first_end = min(j["end"] for j in jobs)
    # the three runs beyond the first four started when a slot freed, not after the long one
    assert sum(j["start"] > first_end and j["end"] < long["end"] for j in jobs) == 3
    recorded = {record(repo, f"fewshot/dtd/shots_1/CoOp/v/seed{s}")["status"] for s in range(1, 8)}
    assert recorded == {"succeeded"}


def test_cpu_jobs_when_no_gpu_is_visible(repo):
    proc = sweep(
        repo,
        "--protocol",
        "fewshot",
        "--trainers",
        "CoOp:v",
        "--datasets",
        "dtd",
        "--shots",
        "1",
        "2",
        "--seeds",
        "1",
        "2",
        "--jobs-per-gpu",
        "2",
        FAKE_SLEEP="0.3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 runs, 2 at once (CPU)" in proc.stderr
    jobs = calls(repo)
    assert {j["cuda"] for j in jobs} == {""}  # the environment's (no GPU), not a pinned one
    assert max(sum(o["start"] <= j["start"] < o["end"] for o in jobs) for j in jobs) == 2


def test_ctrl_c_stops_the_jobs_and_a_rerun_continues(repo):
    proc = sweep(repo, *B2N_ARGS, "--jobs-per-gpu", "2", wait=False, FAKE_SLEEP="30")
    paths = [B2N.format("train_base", "dtd", s) for s in (1, 2)]
    deadline = time.monotonic() + 60
    while not all((repo / "output/sweep/state" / f"{p}.json").exists() for p in paths):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    pids = [record(repo, p)["pid"] for p in paths]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: re-run the same command to continue" in err
    assert [record(repo, p)["status"] for p in paths] == ["interrupted", "interrupted"]
    for pid in pids:  # stopped, not left running
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split(") ")[1][0] == "Z"
    plan = sweep(repo, *B2N_ARGS, "--dry-run").stdout
    assert plan.count("\nrun ") + plan.startswith("run ") == 8 and not calls(repo)
    again = sweep(repo, *B2N_ARGS, "--jobs-per-gpu", "2")
    assert again.returncode == 0, again.stderr
    assert len(calls(repo)) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--trainers", "CoOp"), "expected Trainer:config (e.g. CoOp:vit_b16_ctxv1), got 'CoOp'"),
        (
            ("--trainers", "CoOp:nocfg"),
            "neither configs/trainers/CoOp/nocfg/dtd.yaml nor configs/trainers/CoOp/nocfg.yaml exists",
        ),
        (
            ("--trainers", "CoOp:v", "--datasets", "nosuch"),
            "unknown dataset 'nosuch': configs/datasets/nosuch.yaml does not exist",
        ),
        (("--trainers", "CoOp:v", "--data", "no/such/dir"), "--data no/such/dir is not a directory"),
        (("--trainers", "CoOp:v", "--gpus", "0,,1"), "expected GPU ids such as 0,1,3 (or 'cpu'), got '0,,1'"),
        (("--trainers", "CoOp:v", "--time", "2h"), "expected a time in Slurm's format"),
    ],
)
def test_errors(repo, args, message):
    proc = sweep(repo, "--protocol", "base2new", "--datasets", "dtd", *args)
    assert proc.returncode != 0 and message in proc.stderr and not (repo / "output").exists()


def test_time_formats():
    assert [parse_time(t) for t in ("90", "90:30", "2:00:00", "1-0", "1-2:30", "1-02:30:01")] == [
        90, 91, 120, 1440, 1590, 1591
    ]  # fmt: skip


def test_two_sweeps_share_an_output_tree(repo):
    """A second sweep leaves the runs that the first one runs to it, and waits for them."""
    args = (
        "--protocol",
        "fewshot",
        "--trainers",
        "CoOp:v",
        "--datasets",
        "dtd",
        "--shots",
        "1",
        "--seeds",
        "1",
        "2",
    )
    first = sweep(repo, *args, "--jobs-per-gpu", "2", wait=False, FAKE_SLEEP="3")
    paths = [f"fewshot/dtd/shots_1/CoOp/v/seed{s}" for s in (1, 2)]
    deadline = time.monotonic() + 60
    while not all((repo / "output/sweep/state" / f"{p}.json").exists() for p in paths):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
    status = sweep(repo, *args, "--status").stdout
    assert f"running: {paths[0]}: pid {record(repo, paths[0])['pid']} on " in status
    second = sweep(repo, *args, "--jobs-per-gpu", "2")
    assert second.returncode == 0 and first.wait(timeout=60) == 0, second.stderr
    assert "2/2 runs done" in second.stderr and len(calls(repo)) == 2  # each run ran once


def test_eta_from_the_finished_runs_per_kind():
    train, new = plan("base2new", Grid("CoOp", "vit_b16_ctxv1", "d", "o", ROOT), ["dtd"], [1], [16])
    eta = Eta(workers=2)
    assert eta.remaining([train, new], {}) is None  # nothing finished yet
    eta.finished(train, 100.0)
    assert eta.remaining([new], {}) == 50.0  # no evaluation finished yet: a training run's time
    eta.finished(new, 10.0)
    eta.finished(new, 30.0)
    # (waiting: 100 + 20, running: 100 - 30 left) / 2 workers
    assert eta.remaining([train, new], {train: 30.0}) == (120 + 70) / 2
