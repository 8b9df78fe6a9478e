"""python -m tools.sweep with a stand-in train.py in a scratch repository (no Dassl, data or model):
the plan is the scripts' grid, the local pool pins jobs to GPUs and does not wait in waves, Ctrl-C
stops the jobs and a re-run continues, --status; the Slurm backend through submitit's local
executor, and its sbatch files through stand-in Slurm commands. The same sweep with the real
train.py and the tiny CLIP is tests/test_sweep_e2e.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.protocols import Grid, plan
from tools.results.runlog import read_run
from tools.sweep.progress import Eta
from tools.sweep.slurm import parse_time

ROOT = Path(__file__).resolve().parents[1]
FAKE_TRAIN = """\
import json, os, sys, time
from pathlib import Path

args = sys.argv[1:]
out = Path(args[args.index("--output-dir") + 1])
start = time.time()
long = os.environ.get("FAKE_LONG", "-") in str(out)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) * (8 if long else 1))
if os.environ.get("FAKE_FAIL", "-") in str(out):
    print("Traceback (most recent call last):\\nRuntimeError: injected failure")
    sys.exit(3)
out.mkdir(parents=True, exist_ok=True)
if "--eval-only" not in args:
    (out / "prompt_learner").mkdir(exist_ok=True)
    (out / "prompt_learner" / "model.pth.tar-2").write_text("")
if "--model-dir" in args:
    assert list(Path(args[args.index("--model-dir") + 1]).glob("*/model.pth.tar-*")), "no model"
correct = 500 + 10 * int(args[args.index("--seed") + 1]) + (100 if "new" in args else 0)
result = f"=> result\\n* total: 1,000\\n* correct: {correct}\\n* accuracy: {correct / 10:.1f}%\\n"
(out / "log.txt").write_text(result)
call = {"out": str(out), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
with open("calls.jsonl", "a") as f:
    f.write(json.dumps(call) + "\\n")
"""
B2N = "base2new/{}/{}/shots_16/CoOp/v/seed{}"


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("tools", "scripts"):
        (root / name).symlink_to(ROOT / name)
    (root / "train.py").write_text(FAKE_TRAIN)
    for path in ("datasets/dtd", "datasets/eurosat", "datasets/imagenet", "trainers/CoOp/v"):
        (root / "configs" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "configs" / f"{path}.yaml").write_text("")
    (root / "data").mkdir()
    return root


def sweep(repo, *args, wait=True, report=False, **env):
    """python -m tools.sweep in `repo` (CPU jobs: no GPU visible) with `env` added; without the
    tables at the end unless `report`."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FAKE_SLEEP": "0", **env}
    cmd = [sys.executable, "-m", "tools.sweep", "--data", "data", *args, *([] if report else ["--no-report"])]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def calls(repo):
    path = repo / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record(repo, path):
    return json.loads((repo / "output/sweep/state" / f"{path}.json").read_text())


B2N_ARGS = (
    "--protocol",
    "base2new",
    "--trainers",
    "CoOp:v",
    "--datasets",
    "dtd",
    "eurosat",
    "--seeds",
    "1",
    "2",
)


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
    assert "| CoOp:v           |      6 |         0 |        1 |         1 |         0 |" in status.stdout
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


@pytest.fixture
def slurm_bin(tmp_path):
    """Stand-in srun, sbatch, sacct and scancel: sbatch keeps each submission file and answers
    with the next job id; sacct answers the states the test writes into slurm.json."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    db = tmp_path / "slurm.json"
    db.write_text(json.dumps({"next": 1000, "files": {}, "states": {}, "cancelled": []}))
    scripts = {
        "srun": "pass",
        "sbatch": "job = db['next']; db['next'] += 1; db['files'][job] = Path(sys.argv[-1]).read_text(); "
        "print(f'Submitted batch job {job}')",
        "sacct": "print('JobID|State|NodeList'); ids = sys.argv[sys.argv.index('-j') + 1::2]; "
        "[print(f'{k}|{s}|node1') for k, s in db['states'].items() if k.split('_')[0] in ids]",
        "scancel": "db['cancelled'] += sys.argv[1:]",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\nimport json, sys\nfrom pathlib import Path\n"
            f"db = json.loads(Path({str(db)!r}).read_text())\n{body}\n"
            f"Path({str(db)!r}).write_text(json.dumps(db))\n"
        )
        path.chmod(0o755)
    return bin_dir, db


def test_slurm_submission_files(repo, slurm_bin):
    bin_dir, db = slurm_bin
    path = f"{bin_dir}:{os.environ['PATH']}"
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
    proc = sweep(repo, *B2N_ARGS, *opts, report=True, PATH=path)
    assert proc.returncode == 0, proc.stderr
    files = json.loads(db.read_text())["files"]
    train, evals = files["1000"], files["1001"]
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
        assert "#SBATCH --array=0-3%4\n" in text
    assert "--dependency" not in train and "#SBATCH --dependency=afterany:1000\n" in evals
    tables = files["1002"]  # the job that writes the tables, once all others have ended
    assert "#SBATCH --dependency=afterany:1000:1001\n" in tables and "#SBATCH --gpus-per-node=0\n" in tables
    assert (
        json.loads((repo / f"output/sweep/slurm/jobs/{B2N.format('test_new', 'dtd', 2)}.json").read_text())[
            "job_id"
        ]
        == "1001_1"
    )

    assert (
        "nothing to submit" in sweep(repo, *B2N_ARGS, *opts, PATH=path).stderr
    )  # queued: sacct knows nothing yet
    states = {"1000_0": "RUNNING", "1000_1": "CANCELLED", "1000_2": "COMPLETED", "1000_3": "PENDING"}
    states |= {f"1001_{i}": "PENDING" for i in range(4)}
    db.write_text(json.dumps({**json.loads(db.read_text()), "states": states}))
    status = sweep(repo, *B2N_ARGS, *opts, "--status", PATH=path).stdout
    assert "running: " + B2N.format("train_base", "dtd", 1) + ": Slurm job 1000_0: RUNNING" in status
    again = sweep(repo, *B2N_ARGS, *opts, PATH=path)
    assert again.returncode == 0, again.stderr
    state = json.loads(db.read_text())
    # The cancelled training run and the one whose job ended without a result are submitted
    # again; their queued evaluations are cancelled and submitted again after them.
    assert state["cancelled"] == ["1001_1", "1001_2"]
    assert "#SBATCH --array=0-1%2\n" in state["files"]["1003"]
    assert (
        "#SBATCH --array=0-1%2\n#SBATCH --cpus-per-task=6\n#SBATCH --dependency=afterany:1003\n"
        in state["files"]["1004"]
    )
    assert (
        json.loads(
            (repo / f"output/sweep/slurm/jobs/{B2N.format('test_new', 'eurosat', 1)}.json").read_text()
        )["job_id"]
        == "1004_1"
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
