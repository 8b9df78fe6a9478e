"""What one Slurm job of a sweep runs (pickled by submitit, so importable and small): one run's
train.py, retried, with the same records as the local pool. An evaluation whose training run is
not finished when its job starts (the job array it depends on ended, but that run failed) is
recorded as blocked and never started on a missing model."""

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from tools.sweep.state import BLOCKED, FAILED, RUNNING, Store, tail


@dataclass(frozen=True)
class JobSpec:
    run: object  # tools.protocols.Run
    output: str  # the output root, as given (relative to `cwd`)
    python: str  # the interpreter that runs train.py
    retries: int
    cwd: str  # the repository root, where train.py and configs/ are


class Stopped(Exception):
    pass


def _stopped(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def job_id():
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or f"pid {os.getpid()}"


def run_job(spec):
    """Run `spec.run` unless it is finished or its training run is not; returns what happened
    ("done", "blocked", "succeeded"); raises after the last failed attempt so that the scheduler
    shows the job as failed."""
    os.chdir(spec.cwd)
    store, run = Store(spec.output), spec.run
    if store.finished(run.path):
        return "done"
    if run.after and not store.finished(run.after):
        store.write(run, {"status": BLOCKED, "waits_for": run.after, "job_id": job_id()})
        return "blocked"
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        for attempt in range(1, spec.retries + 2):
            code, log_path, offset = _attempt(spec, store, attempt)
            if code == 0 and store.finished(run.path):
                store.write(run, {"status": "succeeded", "attempt": attempt, "job_id": job_id()})
                return "succeeded"
            last_lines = tail(log_path, offset)
            store.write(
                run,
                {
                    "status": FAILED,
                    "exit_code": code,
                    "attempt": attempt,
                    "job_id": job_id(),
                    "log": str(log_path),
                    "log_tail": last_lines,
                },
            )
        raise RuntimeError(
            f"{run.path} failed after {attempt} attempt(s) (exit status {code}); log: {log_path}"
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def _attempt(spec, store, attempt):
    run = spec.run
    command = [spec.python, "train.py", *run.args]
    where = f"job {job_id()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}"
    log_path, offset = store.start_log(run, attempt, command, where)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        store.write(
            run,
            {
                "status": RUNNING,
                "backend": "slurm",
                "host": socket.gethostname(),
                "pid": proc.pid,
                "job_id": job_id(),
                "attempt": attempt,
                "command": command,
                "log": str(log_path),
            },
        )
        try:
            code = proc.wait()
        except (KeyboardInterrupt, Stopped):
            proc.terminate()
            proc.wait()
            store.write(run, {"status": "interrupted", "attempt": attempt, "job_id": job_id()})
            print(f"stopped: {run.path} recorded as interrupted", file=sys.stderr)
            raise
    return code, log_path, offset


def write_tables(results, plots, cwd=None):
    """tools.results on the output tree, then tools.plots (run as `results` and `plots`, command
    lists); returns tools.results' exit status. Figures are a bonus: a tree without anything to
    plot (base-to-new runs of methods without routing) gets a note, not a failure."""
    if cwd:
        os.chdir(cwd)
    print(f"$ {' '.join(results)}", flush=True)
    code = subprocess.run(results, check=False).returncode
    print(f"$ {' '.join(plots)}", flush=True)
    if subprocess.run(plots, check=False).returncode != 0:
        print("(no figures: see the message above)", flush=True)
    return code


def tables_job(results, plots, cwd):
    """The Slurm job that writes the tables once every run job has ended."""
    if write_tables(results, plots, cwd) != 0:
        raise RuntimeError("tools.results failed: see the job's output")
