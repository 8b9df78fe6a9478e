"""The sweep's checks on a real Slurm cluster (scripts/slurm_localhost.sh starts one on this
machine and runs this with SLURM_CONF set; docs/SWEEPS.md, "Checked on a real cluster").

One sweep, base-to-new on the demo world with the tiny CLIP (CoOp `quick`: 4 epochs; CoOp `long`:
enough epochs to outlast `--time 3`), seeds 1 2, 4 shots, one CPU per job: 8 runs. While its
first invocation waits (--wait), a running training is cancelled (scancel), another is killed
with SIGKILL (the job's processes: nothing can write its record, as after the out-of-memory
killer), a queued evaluation is cancelled (it leaves no accounting row), and the long trainings
reach --time (USR2: requeued, resumed from their checkpoints). That invocation must end, not hang; the same command again
without --wait submits what was lost, and again with --wait waits for those jobs and ends with
every run finished; the accuracies must equal those of the local backend on the same runs. Before
that: a wrong partition and an unavailable GPU (one error, no files left), and a job that can
never start (its pending reason, and --wait stops). Prints what happened; exit status 1 when a
check failed.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.protocols import Grid, plan
from tools.results.runlog import read_run
from tools.sweep.state import LOST

ROOT = Path(__file__).resolve().parents[2]
LINKED = ("train.py", "trainers", "datasets", "clipprompt", "tools", "scripts", "assets")
# Epochs of the two trainer configs (the demo config otherwise): `long` must outlast the 60 to
# 90 s before Slurm's warning signal on a fast CPU (0.15 to 0.4 s an epoch on the 2-core machine
# of docs/SWEEPS.md).
EPOCHS = {"quick": 10, "long": 400}
TRAIN, EVAL = "train_base", "test_new"
TIMEOUT_S = 1800  # for one invocation of the sweep


class Checks:
    def __init__(self, work, python):
        self.repo = work / "repo"
        self.data = work / "data"
        self.python = python
        self.failed = []

    def say(self, text):
        print(f"[check] {text}", flush=True)

    def check(self, ok, what):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)

    def prepare(self):
        """The scratch repository (code linked, configs copied, the two configs added) and the
        demo world."""
        self.repo.mkdir(parents=True, exist_ok=True)
        for name in LINKED:
            if not (self.repo / name).exists():
                (self.repo / name).symlink_to(ROOT / name)
        if not (self.repo / "configs").exists():
            shutil.copytree(ROOT / "configs", self.repo / "configs")
        for name, epochs in EPOCHS.items():
            text = f"_BASE_: demo.yaml\nOPTIM:\n  MAX_EPOCH: {epochs}\n"
            (self.repo / f"configs/trainers/CoOp/{name}.yaml").write_text(text)
        if not (self.data / "demo_world").is_dir():
            subprocess.run(
                [self.python, "-m", "tools.demo_world", "--root", str(self.data)], cwd=ROOT, check=True
            )

    def command(self, output, *extra, backend="slurm"):
        cmd = [self.python, "-m", "tools.sweep", "--protocol", "base2new", "--trainers"]
        cmd += ["CoOp:quick", "CoOp:long", "--datasets", "demo_world", "--seeds", "1", "2", "--shots", "4"]
        cmd += ["--data", str(self.data), "--output", output, "--python", self.python, "--backend", backend]
        if backend == "slurm":
            cmd += ["--partition", "debug", "--gpus-per-job", "0", "--cpus-per-job", "1", "--time", "3"]
            cmd += ["--poll", "5"]
        return cmd + list(extra)

    def sweep(self, output, *extra, backend="slurm", log=None):
        """Run the sweep to its end; returns (exit status, stdout, stderr) and prints stderr."""
        cmd = self.command(output, *extra, backend=backend)
        self.say("$ python -m tools.sweep ... " + " ".join(cmd[cmd.index("--output") :]))
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(
            cmd, cwd=self.repo, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
        for line in proc.stderr.splitlines():
            print(f"    {line}", flush=True)
        return proc.returncode, proc.stdout, proc.stderr

    def runs(self, output, name=None):
        runs = []
        for config in EPOCHS:
            runs += plan(
                "base2new", Grid("CoOp", config, "data", output, str(self.repo)), ["demo_world"], [1, 2], [4]
            )
        return [r for r in runs if name is None or f"/{name}/" in f"/{r.path}/"]

    def path(self, output, kind, config, seed):
        return next(
            r.path
            for r in self.runs(output)
            if r.path.startswith(f"base2new/{kind}/") and f"/{config}/seed{seed}" in r.path
        )

    def record(self, output, path):
        state = self.repo / output / "sweep/state" / f"{path}.json"
        return json.loads(state.read_text()) if state.exists() else {}

    def job_id(self, output, path):
        return json.loads((self.repo / output / "sweep/slurm/jobs" / f"{path}.json").read_text())["job_id"]

    def refused(self):
        for option, what in (
            ("--partition=nosuch", "a wrong partition"),
            ("--gpus-per-job=1", "an unavailable GPU"),
        ):
            self.say(f"{what}: one error, no job, no file left")
            code, _, err = self.sweep("refused", option)
            files = [p for p in (self.repo / "refused").rglob("*") if not p.is_dir()]
            self.check(
                code == 1 and err.count("\n") == 1 and err.startswith("error: sbatch refused"),
                "one error line",
            )
            self.check(not files, f"no file left under refused/ ({len(files)} found)")

    def never_starts(self):
        self.say("more CPUs than the node has: queued with its reason, and --wait stops")
        code, _, err = self.sweep("stuck", "--cpus-per-job=8", "--wait")
        self.check(
            code == 1 and "PENDING (PartitionConfig): it can never start as submitted" in err,
            "pending reason",
        )
        self.check("stopped waiting: the 8 job(s) left can never start as submitted" in err, "--wait stops")
        jobs = sorted({self.job_id("stuck", r.path).split("_")[0] for r in self.runs("stuck")})
        subprocess.run(["scancel", *jobs], check=True)
        self.say(f"scancel {' '.join(jobs)}")

    def wait_for_running(self, output, path, proc, attempt=1):
        deadline = time.monotonic() + 600
        while self.record(output, path).get("status") != "running":
            if proc.poll() is not None or time.monotonic() > deadline:
                self.check(False, f"{path} started")
                return None
            time.sleep(0.5)
        return self.record(output, path)

    def faults(self):
        """The first invocation, with --wait, and the faults injected while it waits."""
        out = "slurm"
        self.say("first invocation (--wait), faults injected while it waits")
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
        log = self.repo / "first.log"
        with open(log, "w") as stderr:
            proc = subprocess.Popen(
                self.command(out, "--wait"), cwd=self.repo, env=env, stdout=stderr, stderr=stderr
            )
        cancelled = self.path(out, TRAIN, "quick", 1)
        rec = self.wait_for_running(out, cancelled, proc)
        if rec:
            self.say(
                f"scancel {rec['job_id']} (training {cancelled}, running on {rec['host']}, pid {rec['pid']})"
            )
            subprocess.run(["scancel", rec["job_id"]], check=True)
            here = socket.gethostname()
            self.check(rec["host"] != here, f"the jobs run on host {rec['host']}, the sweep on {here}")
        killed = self.path(out, TRAIN, "quick", 2)
        rec = self.wait_for_running(out, killed, proc)
        if rec:
            # The job's Python (train.py's parent), then train.py: nothing is left to record the end.
            parent = int(Path(f"/proc/{rec['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
            self.say(f"kill -KILL {parent} {rec['pid']} (job {rec['job_id']}, training {killed}, running)")
            for pid in (parent, rec["pid"]):
                os.kill(pid, signal.SIGKILL)
        queued = self.path(out, EVAL, "long", 2)
        job = self.job_id(out, queued)
        squeue = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, check=False
        )
        self.say(f"scancel {job} (evaluation {queued}: {squeue.stdout.strip()})")
        subprocess.run(["scancel", job], check=True)
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        for line in log.read_text().splitlines():
            print(f"    {line}", flush=True)
        self.check(code == 1, f"the first invocation ended (exit status {code}), not all runs done")
        for path, why in ((cancelled, "SIGTERM"), (killed, LOST)):
            rec = self.record(out, path)
            ok = rec.get("status") == "interrupted" and rec.get("cause", "").startswith(why)
            self.check(ok, f"{path}: {rec.get('status')}: {rec.get('cause')}")

    def recover(self):
        out = "slurm"
        self.say("the same command without --wait: submits what was lost")
        code, _, err = self.sweep(out)
        tables = re.search(r"tables: job (\d+)", err)
        self.check(code == 0 and "submitted" in err and bool(tables), "resubmitted, and a tables job")
        if tables:  # its own resources, as Slurm holds them (it may be cancelled before it starts)
            shown = subprocess.run(
                ["scontrol", "show", "job", tables.group(1)], capture_output=True, text=True, check=True
            )
            asked = dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)
            resources = [asked.get(k) for k in ("NumCPUs", "MinMemoryNode", "TimeLimit", "JobName")]
            ok = resources[:3] == ["1", "4G", "00:30:00"] and resources[3].endswith(":tables")
            self.check(ok, f"the tables job {tables.group(1)}: " + ", ".join(map(str, resources)))
        self.say("--status")
        _, status, _ = self.sweep(out, "--status")
        for line in status.splitlines():
            print(f"    {line}", flush=True)
        for attempt in range(3):
            self.say("the same command with --wait: waits for the jobs submitted before")
            code, _, err = self.sweep(out, "--wait")
            if code == 0:
                break
        self.check(code == 0 and "8/8 runs done" in err, "every run finished")
        self.check(attempt > 0 or "nothing to submit" in err, "the --wait invocation waited for earlier jobs")
        logs = [
            (self.repo / out / "sweep/logs" / f"{r.path}.log") for r in self.runs(out, "long") if r.trains
        ]
        requeued = [p for p in logs if "requeued 1 time(s)" in p.read_text()]
        self.check(bool(requeued), f"{len(requeued)} long training run(s) requeued at the time limit")
        for path in requeued:
            resumed = [line for line in path.read_text().splitlines() if line.startswith("Resumed ")]
            print(f"    {path.name}: {resumed[0] if resumed else 'not resumed'}")
        header = logs[0].read_text().splitlines()[0]
        self.check("OMP_NUM_THREADS=1" in header, "OMP_NUM_THREADS of the job's CPUs")
        self.accounting()

    def accounting(self):
        """Job names, states and requests, as sacct recorded them."""
        fields = "JobID%12,JobName%28,State%20,ReqCPUS,ReqMem,Timelimit"
        sacct = subprocess.run(["sacct", "-X", "-o", fields], capture_output=True, text=True, check=True)
        print("    " + sacct.stdout.rstrip().replace("\n", "\n    "), flush=True)

    def same_as_local(self):
        self.say("the same sweep with the local backend")
        code, _, _ = self.sweep("local", "--jobs-per-gpu", "2", "--no-report", backend="local")
        slurm = {r.path: read_run(self.repo / "slurm" / r.path).accuracy for r in self.runs("slurm")}
        local = {r.path: read_run(self.repo / "local" / r.path).accuracy for r in self.runs("local")}
        for path, accuracy in slurm.items():
            print(f"    {path}: slurm {accuracy}  local {local[path]}")
        self.check(code == 0 and None not in slurm.values() and slurm == local, "the same accuracies")


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.sweep.cluster_checks", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--work", type=Path, required=True, help="a folder for the scratch repository and data")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the sweep and train.py")
    p.add_argument(
        "--checks",
        nargs="+",
        choices=("refused", "never_starts", "faults", "recover", "same_as_local"),
        default=["refused", "never_starts", "faults", "recover", "same_as_local"],
    )
    args = p.parse_args(argv)
    if "SLURM_CONF" not in os.environ or shutil.which("sbatch") is None:
        p.error("run this on a Slurm cluster (scripts/slurm_localhost.sh starts one and sets SLURM_CONF)")
    checks = Checks(args.work.resolve(), args.python)
    checks.prepare()
    start = time.monotonic()
    for name in args.checks:
        getattr(checks, name)()
    minutes = (time.monotonic() - start) / 60
    if checks.failed:
        print(
            f"[check] {len(checks.failed)} check(s) FAILED in {minutes:.1f} min:\n  "
            + "\n  ".join(checks.failed)
        )
        return 1
    print(f"[check] all checks passed in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
