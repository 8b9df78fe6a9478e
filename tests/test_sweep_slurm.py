"""The sweep's Slurm backend against stand-in Slurm commands (tests/sweep_fakes.py) that give the
answers a real cluster gave (scripts/slurm_localhost.sh): the sbatch files; a run's liveness from
squeue, then sacct, then the job's absence (an array task cancelled while queued has no
accounting row; sacct with accounting storage disabled; a record written on another host; a job
killed without a chance to write its record); --wait for runs submitted earlier and for a queued
task cancelled under it; pending reasons that no waiting resolves; sbatch refusing a submission.
What one job runs is tested as srun starts it (submitit's runner): the time limit's USR2 requeues
it from its checkpoint, SIGTERM stops it. Last, the same jobs through submitit's local executor."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from submitit.core.utils import DelayedSubmission

from tests.sweep_fakes import B2N, B2N_ARGS, FakeSlurm, calls, finish, make_repo, record, sweep
from tools.protocols import Grid, plan
from tools.results.runlog import read_run
from tools.sweep.job import MAX_REQUEUES, JobSpec, RunJob
from tools.sweep.scheduler import array_ids
from tools.sweep.state import LOST

# One dataset, two seeds: training runs 1000_0 and 1000_1, their evaluations 1001_0 and 1001_1.
FOUR = ("--protocol", "base2new", "--trainers", "CoOp:v", "--datasets", "dtd", "--seeds", "1", "2")
SLURM = ("--backend", "slurm", "--gpus-per-job", "0", "--cpus-per-job", "1", "--time", "10", "--poll", "1")
TRAIN = [B2N.format("train_base", "dtd", s) for s in (1, 2)]
EVAL = [B2N.format("test_new", "dtd", s) for s in (1, 2)]


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path)


@pytest.fixture
def slurm(tmp_path):
    return FakeSlurm(tmp_path)


def job_file(repo, path):
    return json.loads((repo / "output/sweep/slurm/jobs" / f"{path}.json").read_text())


def test_submission_files_and_resubmission(repo, slurm):
    opts = ("--backend", "slurm", "--partition", "gpu", "--time", "1-02:30:00", "--gpus-per-job", "1")
    opts += (
        "--cpus-per-job",
        "6",
        "--mem",
        "40G",
        "--slurm-opt",
        "account=abc",
        "--slurm-setup",
        "source env.sh",
    )
    proc = sweep(repo, *B2N_ARGS, *opts, report=True, PATH=slurm.path)
    assert proc.returncode == 0, proc.stderr
    files = slurm.db()["files"]
    train, evals, tables = files["1000"], files["1001"], files["1002"]
    for text in (train, evals):
        for line in (
            "--partition=gpu",
            "--time=1590",
            "--gpus-per-node=1",
            "--cpus-per-task=6",
            "--mem=40GB",
        ):
            assert f"#SBATCH {line}\n" in text
        assert "#SBATCH --account=abc\n" in text and "\nsource env.sh\n" in text
        assert "#SBATCH --array=0-3%4\n" in text and "#SBATCH --signal=USR2@90\n" in text
    assert "#SBATCH --job-name=base2new:CoOp:train\n" in train and "--dependency" not in train
    assert "#SBATCH --job-name=base2new:CoOp:eval\n" in evals
    assert "#SBATCH --dependency=afterany:1000\n" in evals
    # The tables: once every job of the sweep has ended, with small resources of their own.
    for line in ("dependency=afterany:1000:1001", "gpus-per-node=0", "cpus-per-task=1", "mem=4GB", "time=30"):
        assert f"#SBATCH --{line}\n" in tables
    assert "#SBATCH --job-name=base2new:CoOp:tables\n" in tables and "#SBATCH --account=abc\n" in tables
    assert job_file(repo, B2N.format("test_new", "dtd", 2))["job_id"] == "1001_1"

    assert "nothing to submit" in sweep(repo, *B2N_ARGS, *opts, PATH=slurm.path).stderr  # all queued
    slurm.set("1000_0", "RUNNING")
    slurm.end("1000_1", "CANCELLED")
    slurm.end("1000_2", "COMPLETED")  # but its run has no result
    status = sweep(repo, *B2N_ARGS, *opts, "--status", PATH=slurm.path).stdout
    assert "| CoOp:v           |      0 |         1 |        5 |        0 |         0 |         2 |" in status
    assert f"running: {B2N.format('train_base', 'dtd', 1)}: Slurm job 1000_0: RUNNING on node1\n" in status
    assert (
        f"queued: {B2N.format('train_base', 'eurosat', 2)}: Slurm job 1000_3: PENDING (Priority)\n" in status
    )
    assert f"pending: {B2N.format('train_base', 'dtd', 2)}: Slurm job 1000_1 ended: CANCELLED\n" in status
    no_result = "Slurm job 1000_2 ended: COMPLETED, but the run has no result"
    assert f"pending: {B2N.format('train_base', 'eurosat', 1)}: {no_result}\n" in status
    again = sweep(repo, *B2N_ARGS, *opts, PATH=slurm.path)
    assert again.returncode == 0, again.stderr
    db = slurm.db()
    # The cancelled training run and the one whose job ended without a result are submitted
    # again; their queued evaluations are cancelled and submitted again after them.
    assert db["cancelled"] == ["1001_1", "1001_2"]
    assert "#SBATCH --array=0-1%2\n" in db["files"]["1003"]
    assert "#SBATCH --dependency=afterany:1003\n" in db["files"]["1004"]
    assert job_file(repo, B2N.format("test_new", "eurosat", 1))["job_id"] == "1004_1"


@pytest.mark.parametrize("sacct", ["ok", "disabled"])
def test_a_job_slurm_no_longer_knows_is_submitted_again(repo, slurm, sacct):
    """An evaluation cancelled while queued: squeue no longer lists it and sacct has no row for
    it (or has no rows at all); the run is not counted as queued for ever, but submitted again."""
    assert sweep(repo, *FOUR, *SLURM, PATH=slurm.path).returncode == 0
    for path, job in zip(TRAIN, ("1000_0", "1000_1")):
        finish(repo, path)
        slurm.end(job)
    slurm.end("1001_0", accounted=False)
    slurm.update(sacct=sacct)
    status = sweep(repo, *FOUR, *SLURM, "--status", PATH=slurm.path).stdout
    why = {"ok": "sacct has no row for it", "disabled": "sacct cannot tell (sacct failed: "}[sacct]
    assert f"pending: {EVAL[0]}: Slurm job 1001_0 is no longer in the queue and {why}" in status
    assert f"queued: {EVAL[1]}: Slurm job 1001_1: PENDING (Dependency)\n" in status
    again = sweep(repo, *FOUR, *SLURM, PATH=slurm.path)
    # One run is one job, not an array (submitit).
    assert "submitted 1 evaluations as job(s) 1002 (base2new:CoOp:eval)" in again.stderr
    assert "--array" not in slurm.db()["files"]["1002"]
    assert job_file(repo, EVAL[0])["job_id"] == "1002" and job_file(repo, EVAL[1])["job_id"] == "1001_1"


def test_a_record_from_another_host_is_judged_by_slurm(repo, slurm):
    """Both training runs' records say "running" on node7, not this host: the one whose job
    still runs is left to it; the one whose job was killed (no chance to write its record) is
    recorded as interrupted and submitted again, with its queued evaluation after it."""
    assert sweep(repo, *FOUR, *SLURM, PATH=slurm.path).returncode == 0
    for i, path in enumerate(TRAIN):
        state = repo / "output/sweep/state" / f"{path}.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        running = {"run": path, "status": "running", "backend": "slurm", "host": "node7", "pid": 1}
        state.write_text(json.dumps({**running, "job_id": f"1000_{i}", "attempt": 1}))
    slurm.set("1000_0", "RUNNING", node="node7")
    slurm.end("1000_1", "NODE_FAIL")
    status = sweep(repo, *FOUR, *SLURM, "--status", PATH=slurm.path).stdout
    assert f"running: {TRAIN[0]}: Slurm job 1000_0: RUNNING on node7\n" in status
    assert f"pending: {TRAIN[1]}: Slurm job 1000_1 ended: NODE_FAIL, its node failed\n" in status
    again = sweep(repo, *FOUR, *SLURM, PATH=slurm.path)
    assert again.returncode == 0, again.stderr
    killed = record(repo, TRAIN[1])
    assert (killed["status"], killed["cause"]) == ("interrupted", LOST)
    assert killed["slurm"] == "Slurm job 1000_1 ended: NODE_FAIL, its node failed"
    db = slurm.db()
    assert db["cancelled"] == ["1001_1"] and "#SBATCH --dependency=afterany:1002\n" in db["files"]["1003"]
    assert [job_file(repo, p)["job_id"] for p in TRAIN + EVAL] == ["1000_0", "1002", "1001_0", "1003"]


def progress_started(proc):
    """Read the sweep's stderr up to its first progress line; returns what it printed."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("[sweep]"):
            return "".join(lines)
    raise AssertionError("the sweep ended before it showed progress:\n" + "".join(lines))


def run_job(repo, slurm, job, path):
    slurm.set(job, "RUNNING")
    finish(repo, path)
    slurm.end(job)


def test_wait_waits_for_runs_submitted_earlier(repo, slurm):
    first = sweep(repo, *FOUR, *SLURM, report=True, PATH=slurm.path)
    assert "tables: job 1002 (after 1000, 1001) writes output/tables" in first.stderr
    waiting = sweep(repo, *FOUR, *SLURM, "--wait", wait=False, report=True, PATH=slurm.path)
    try:
        shown = progress_started(waiting)
        assert "nothing to submit" in shown and "[sweep] 0/4 done | 0 running | 4 queued |" in shown
        for job, path in zip(("1000_0", "1000_1", "1001_0", "1001_1"), TRAIN + EVAL):
            run_job(repo, slurm, job, path)
        _, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert (
        "[sweep] 4/4 done | 0 running | 0 queued | 0 failed | 0 blocked |" in err and "4/4 runs done" in err
    )
    # The tables are written here, once: the earlier invocation's tables job, still queued, is cancelled.
    assert "cancelled the queued tables job 1002: this invocation writes them" in err
    assert slurm.db()["cancelled"] == ["1002"] and (repo / "output/tables/base2new.csv").exists()


def test_wait_ends_when_one_of_its_queued_tasks_is_cancelled(repo, slurm):
    waiting = sweep(repo, *FOUR, *SLURM, "--wait", wait=False, PATH=slurm.path)
    try:
        progress_started(waiting)
        for job, path in zip(("1000_0", "1000_1", "1001_0"), TRAIN + EVAL):
            run_job(repo, slurm, job, path)
        slurm.end("1001_1", accounted=False)  # scancel while it waited for its dependency
        _, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, err
    gone = "Slurm job 1001_1 is no longer in the queue and sacct has no row for it"
    assert f"pending: {EVAL[1]}: {gone}\n" in err and "3/4 runs done, 1 not" in err


def test_a_job_that_can_never_start(repo, slurm):
    """More CPUs than any node of the partition: Slurm queues the training runs with reason
    PartitionConfig, and their evaluations wait for them (reason Dependency)."""
    slurm.update(reason="PartitionConfig")
    proc = sweep(repo, *FOUR, *SLURM, "--cpus-per-job", "8", "--wait", PATH=slurm.path)
    assert proc.returncode == 1
    never = "PENDING (PartitionConfig): it can never start as submitted; scancel 1000_0 and re-run with other options"
    assert f"queued: {TRAIN[0]}: Slurm job 1000_0: {never}\n" in proc.stderr
    stopped = "stopped waiting: the 4 job(s) left can never start as submitted, or wait for one that cannot"
    assert stopped in proc.stderr
    status = sweep(repo, *FOUR, *SLURM, "--status", PATH=slurm.path).stdout
    assert "| CoOp:v           |      0 |         0 |        4 |" in status
    assert f"queued: {TRAIN[0]}: Slurm job 1000_0: {never}\n" in status


@pytest.mark.parametrize(
    ("option", "complaint", "message"),
    [
        (
            ("--partition", "nosuch"),
            (
                "sbatch: error: invalid partition specified: nosuch\n"
                "sbatch: error: Batch job submission failed: Invalid partition name specified"
            ),
            "invalid partition specified: nosuch; Batch job submission failed: Invalid partition name specified",
        ),
        (
            ("--gpus-per-job", "1"),
            "sbatch: error: Invalid generic resource (gres) specification",
            "Invalid generic resource (gres) specification",
        ),
    ],
)
def test_sbatch_refusing_is_one_error_and_leaves_no_files(repo, slurm, option, complaint, message):
    slurm.update(refuse=complaint)
    proc = sweep(repo, *FOUR, *SLURM, *option, PATH=slurm.path)
    assert proc.returncode == 1
    assert proc.stderr == f"error: sbatch refused the 2 runs: {message}\n"
    assert [p for p in (repo / "output").rglob("*") if not p.is_dir()] == []


def test_status_where_slurm_cannot_be_asked(repo, slurm, tmp_path):
    """No squeue on this machine: submitted runs count as running (never run a second time)."""
    assert sweep(repo, *FOUR, *SLURM, PATH=slurm.path).returncode == 0
    (tmp_path / "empty").mkdir()
    status = sweep(repo, *FOUR, *SLURM, "--status", PATH=str(tmp_path / "empty"))
    assert "warning: cannot ask Slurm about 4 submitted job(s)" in status.stderr
    no_squeue = "Slurm job 1000_0: unknown: cannot ask Slurm (there is no squeue on this machine)"
    assert f"running: {TRAIN[0]}: {no_squeue}\n" in status.stdout


def test_array_ids():
    assert array_ids("12") == ["12"] and array_ids("12_3") == ["12_3"]
    assert array_ids("12_[0-2,7%4]") == ["12_0", "12_1", "12_2", "12_7"]


def submitted_job(repo, countdown=MAX_REQUEUES):
    """The folder of task 0 of job array 1000 as submitit leaves it: the pickled RunJob of the
    first training run of FOUR, with `countdown` requeues left."""
    run = plan("base2new", Grid("CoOp", "v", "data", "output", str(repo)), ["dtd"], [1], [16])[0]
    delayed = DelayedSubmission(RunJob(), JobSpec(run, "output", sys.executable, 0, str(repo)))
    delayed.set_timeout(10, countdown)
    folder = repo / "jobs"
    folder.mkdir()
    delayed.dump(folder / "1000_0_submitted.pkl")
    return folder, run.path


def start_job(repo, slurm, folder, restart=0, sleep="0"):
    """The job as srun starts it: submitit's runner, with Slurm's environment."""
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "1001", "SLURM_ARRAY_JOB_ID": "1000"}
    env |= {"SLURM_ARRAY_TASK_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "3"}
    env |= {"SLURM_RESTART_COUNT": str(restart), "FAKE_SLEEP": sleep, "PATH": slurm.path}
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
    cmd = [sys.executable, "-u", "-m", "submitit.core._submit", str(folder)]
    return subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def running_pid(repo, path, job):
    state = repo / "output/sweep/state" / f"{path}.json"
    deadline = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text())["status"] == "running"):
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
        time.sleep(0.05)
    return json.loads(state.read_text())["pid"]


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_time_limit_requeues_the_job_which_resumes_the_run(repo, slurm):
    folder, path = submitted_job(repo)
    job = start_job(repo, slurm, folder, sleep="60")
    pid = running_pid(repo, path, job)
    job.send_signal(signal.SIGUSR2)  # Slurm's warning before the time limit (--signal=USR2@90)
    out, _ = job.communicate(timeout=60)
    assert job.returncode != 0 and "Requeued job 1000_0 (2 remaining timeouts)" in out
    assert slurm.db()["scontrol"] == [["requeue", "1000_0"]] and gone(pid)
    rec = record(repo, path)
    assert (rec["status"], rec["cause"], rec["job_id"]) == ("interrupted", "time limit: requeued", "1000_0")

    again = start_job(repo, slurm, folder, restart=1)  # what Slurm starts after the requeue
    assert again.wait(timeout=60) == 0, again.stdout.read()
    assert (record(repo, path)["status"], record(repo, path)["requeued"]) == ("succeeded", 1)
    assert read_run(repo / "output" / path).accuracy == 51.0 and calls(repo)[-1]["omp"] == "3"
    log = (repo / "output/sweep/logs" / f"{path}.log").read_text()
    assert log.count("=== ") == 2 and "OMP_NUM_THREADS=3, requeued 1 time(s): " in log


def test_time_limit_after_the_last_requeue(repo, slurm):
    folder, path = submitted_job(repo, countdown=0)
    job = start_job(repo, slurm, folder, sleep="60")
    pid = running_pid(repo, path, job)
    job.send_signal(signal.SIGUSR2)
    job.communicate(timeout=60)
    assert job.returncode != 0 and slurm.db()["scontrol"] == [] and gone(pid)
    rec = record(repo, path)
    assert rec["status"] == "interrupted"
    assert rec["cause"] == "time limit: Job not requeued because: timed-out too many times."


# The USR2 handler's exception lost, as when it interrupted another handler's logging call
# (seen on the cluster: SIGCONT comes with USR2, and logging swallows exceptions).
LOST_EXCEPTION = """
import os, signal, sys
from tools.protocols import Grid, plan
from tools.sweep.job import JobSpec, RunJob, run_job
run = plan("base2new", Grid("CoOp", "v", "data", "output"), ["dtd"], [1], [16])[0]
spec, runner = JobSpec(run, "output", sys.executable, 1, os.getcwd()), RunJob()
def lost(signum, frame):
    try:
        runner.checkpoint(spec)
        raise RuntimeError("Job not requeued because: timed-out too many times.")
    except RuntimeError:
        pass
signal.signal(signal.SIGUSR2, lost)
try:
    run_job(spec, runner)
except Exception as err:
    print(f"the job ended: {err}")
"""


def test_time_limit_ends_the_job_even_where_submitits_exception_is_lost(repo, slurm):
    env = {**os.environ, "SLURM_JOB_ID": "1001", "SLURM_ARRAY_JOB_ID": "1000", "SLURM_ARRAY_TASK_ID": "0"}
    job = subprocess.Popen(
        [sys.executable, "-c", LOST_EXCEPTION],
        cwd=repo,
        env={**env, "FAKE_SLEEP": "60"},
        stdout=subprocess.PIPE,
        text=True,
    )
    path = B2N.format("train_base", "dtd", 1)
    pid = running_pid(repo, path, job)
    job.send_signal(signal.SIGUSR2)
    out, _ = job.communicate(timeout=60)
    cause = "time limit: not requeued (submitit requeues a job 3 times at most)"
    assert out == f"the job ended: {cause}\n" and gone(pid)
    assert (record(repo, path)["status"], record(repo, path)["cause"]) == ("interrupted", cause)
    log = (repo / "output/sweep/logs" / f"{path}.log").read_text()
    assert log.count("=== ") == 1 and not calls(repo)  # no second attempt after the time limit


def test_sigterm_stops_the_run(repo, slurm):
    """scancel of a running job: SIGTERM to its processes, SIGKILL after Slurm's KillWait."""
    folder, path = submitted_job(repo)
    job = start_job(repo, slurm, folder, sleep="60")
    pid = running_pid(repo, path, job)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    assert job.returncode != 0 and gone(pid)
    rec = record(repo, path)
    assert (rec["status"], rec["cause"]) == (
        "interrupted",
        "SIGTERM: cancelled, preempted or past the time limit",
    )


@pytest.mark.e2e
def test_slurm_backend_through_the_local_executor(repo):
    failing = B2N.format("train_base", "dtd", 2)
    args = (*B2N_ARGS, "--backend", "slurm", "--executor", "local", "--time", "5")
    proc = sweep(repo, *args, FAKE_FAIL=failing)
    assert proc.returncode == 1, proc.stderr
    rec = record(repo, failing)
    assert (rec["status"], rec["exit_code"], rec["attempt"]) == ("failed", 3, 2)
    assert record(repo, B2N.format("test_new", "dtd", 2))["status"] == "blocked"  # by its own job
    assert len(calls(repo)) == 6
    first = {c["out"] for c in calls(repo) if "train_base" in c["out"]}
    assert all(
        c["start"] > max(f["end"] for f in calls(repo) if f["out"] in first)
        for c in calls(repo)
        if "test_new" in c["out"]
    )
    again = sweep(repo, *args)
    assert again.returncode == 0, again.stderr
    assert [c["out"] for c in calls(repo)[6:]] == [
        f"output/{failing}",
        f"output/{B2N.format('test_new', 'dtd', 2)}",
    ]
    assert read_run(repo / "output" / B2N.format("test_new", "dtd", 2)).accuracy == 62.0
