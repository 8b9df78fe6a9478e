"""Stand-ins for the sweep's tests (tests/test_sweep.py, tests/test_sweep_slurm.py): a scratch
repository whose train.py writes a result without Dassl, data or model, and stand-in Slurm
commands that answer what a test sets, in the forms a real Slurm 22.05 gave them
(scripts/slurm_localhost.sh): squeue's and sacct's rows, sacct with accounting storage disabled,
squeue about one job it no longer knows, sbatch refusing a submission."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

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
call["omp"] = os.environ.get("OMP_NUM_THREADS")
with open("calls.jsonl", "a") as f:
    f.write(json.dumps(call) + "\\n")
"""
B2N = "base2new/{}/{}/shots_16/CoOp/v/seed{}"
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


def make_repo(tmp_path):
    """The scratch repository: the sweep's code (and the library its tables use) linked, the
    stand-in train.py, empty configs."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("tools", "scripts", "clipprompt"):
        (root / name).symlink_to(Path(ROOT) / name)
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
    proc = subprocess.Popen(
        cmd,
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches the sweep as in a terminal, also where the test run was started in the
        # background by a shell (which starts it with SIGINT ignored, and Python keeps that).
        # (one call between fork and exec, touching no lock: safe beside the runner's threads)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def calls(repo):
    path = repo / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record(repo, path):
    return json.loads((repo / "output/sweep/state" / f"{path}.json").read_text())


def finish(repo, path, accuracy=50.0):
    """Give the run at `path` a result, as its train.py would have written it."""
    out = repo / "output" / path
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text(f"=> result\n* total: 1,000\n* correct: 500\n* accuracy: {accuracy:.1f}%\n")


# Each stand-in command: Python reading and writing the state file `db` (a JSON object).
SLURM_COMMANDS = {
    "srun": "pass",
    "sbatch": """
text = Path(sys.argv[-1]).read_text()
if db["refuse"]:
    sys.stderr.write(db["refuse"] + "\\n")
    sys.exit(1)
job = str(db["next"])
db["next"] += 1
db["files"][job] = text
array = re.search(r"--array=0-(\\d+)", text)
tasks = [f"{job}_{i}" for i in range(int(array.group(1)) + 1)] if array else [job]
reason = "Dependency" if "--dependency" in text else db["reason"] or "Priority"
for task in tasks:
    db["queue"][task] = ["PENDING", reason, ""]
print(f"Submitted batch job {job}")
""",
    "squeue": """
asked = next(a for a in sys.argv if a.startswith("--jobs=")).split("=", 1)[1].split(",")
rows = [(k, v) for k, v in db["queue"].items() if k.split("_")[0] in asked]
if len(asked) == 1 and not rows:
    sys.stderr.write("slurm_load_jobs error: Invalid job id specified\\n")
    sys.exit(1)
for job, (state, reason, node) in rows:
    print(f"{job}|{state}|{reason}|{node}")
""",
    "sacct": """
if db["sacct"] == "disabled":
    sys.stderr.write("sacct: error: Slurm accounting storage is disabled\\n")
    sys.exit(1)
asked = next(a for a in sys.argv if a.startswith("--jobs=")).split("=", 1)[1].split(",")
for job, (state, reason, node) in db["acct"].items():
    if job.split("_")[0] in asked:
        print(f"{job}|{state}|{reason}|{node}")
""",
    "scancel": """
db["cancelled"] += sys.argv[1:]
for job in sys.argv[1:]:
    db["queue"].pop(job, None)  # a pending task cancelled: no accounting row, as in Slurm
""",
    "scontrol": 'db["scontrol"].append(sys.argv[1:])',
}


class FakeSlurm:
    """Stand-in Slurm commands in `bin_dir`; `path` puts them first on PATH. The test says what
    squeue lists (`queue`: {job id: [state, reason, node]}) and what sacct has rows for (`acct`)."""

    def __init__(self, tmp_path):
        self.bin_dir = tmp_path / "bin"
        self.bin_dir.mkdir()
        self.db_path = tmp_path / "slurm.json"
        self.db_path.write_text(
            json.dumps(
                {
                    "next": 1000,
                    "files": {},
                    "queue": {},
                    "acct": {},
                    "sacct": "ok",
                    "reason": "",
                    "refuse": "",
                    "cancelled": [],
                    "scontrol": [],
                }
            )
        )
        for name, body in SLURM_COMMANDS.items():
            path = self.bin_dir / name
            path.write_text(
                f"#!{sys.executable}\nimport json, re, sys\nfrom pathlib import Path\n"
                f"db = json.loads(Path({str(self.db_path)!r}).read_text())\n{body}\n"
                f"Path({str(self.db_path)!r}).write_text(json.dumps(db))\n"
            )
            path.chmod(0o755)
        self.path = f"{self.bin_dir}:{os.environ['PATH']}"

    def db(self):
        return json.loads(self.db_path.read_text())

    def update(self, **fields):
        self.db_path.write_text(json.dumps({**self.db(), **fields}))

    def set(self, job, state, reason="None", node="node1"):
        """squeue lists `job` in `state`; sacct has a row for it once it has started."""
        db = self.db()
        db["queue"][job] = [state, reason, node]
        if state != "PENDING":
            db["acct"][job] = [state, reason, node]
        self.db_path.write_text(json.dumps(db))

    def end(self, job, state="COMPLETED", accounted=True):
        """`job` has ended: squeue no longer lists it; sacct has its row unless not `accounted`."""
        db = self.db()
        db["queue"].pop(job, None)
        if accounted:
            db["acct"][job] = [state, "None", "node1"]
        else:
            db["acct"].pop(job, None)
        self.db_path.write_text(json.dumps(db))
