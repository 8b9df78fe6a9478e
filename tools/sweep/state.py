"""The sweep's state in the output folder, and what each run of a plan is now.

`<output>/sweep/state/<run path>.json` is the last record of a run written by whoever ran it (the
local pool or a Slurm job): running (with host and pid), succeeded, failed (exit status and the
tail of its output), interrupted (and why: stopped, the time limit, its Slurm job gone) or
blocked. `<output>/sweep/logs/<run path>.log` holds the output of every attempt, each after a
header line. Records are written atomically (a temporary file renamed over the old one), so a
crash never leaves half a record.

A record never decides that a run is finished: that is the run's own log (tools.results.runlog,
the rule the scripts and tools.results use). Nor does a record of a Slurm job decide that the run
is alive: that is what Slurm says about the job (tools.sweep.slurm, a Verdict per run). Records
say what neither can: that a local process runs it right now, that it failed and why, or that it
waits for a failed training run.
"""

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tools.results.runlog import read_run

SWEEP_DIR = "sweep"
TAIL_LINES = 20
# What a run is now: what the sweep will do with it. QUEUED: its Slurm job waits to start.
DONE, RUNNING, QUEUED, FAILED, BLOCKED, PENDING = "done", "running", "queued", "failed", "blocked", "pending"
STATES = (DONE, RUNNING, QUEUED, FAILED, BLOCKED, PENDING)
# The backend field of the records written inside a Slurm job (tools.sweep.job).
SLURM = "slurm"
# The cause the sweep records for a run whose Slurm job ended while its record said "running";
# the record's `slurm` field has what Slurm said then.
LOST = "its job ended while it ran, and nothing recorded why (SIGKILL, out of memory, node failure)"


def now():
    return time.strftime("%Y-%m-%d %H:%M:%S")


def write_json(path, data):
    """Write `data` as JSON at `path` atomically (a reader sees the old or the new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path):
    """The JSON object at `path`, or None when there is none."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(
            f"error: {path} is not valid JSON ({err}); move it away to forget that record"
        ) from err


def pid_alive(pid, marker):
    """Whether process `pid` runs on this host and (where /proc tells) its command line holds
    `marker` (the run's directory), so that a reused pid is not taken for the run."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True
    return marker in cmdline


def tail(path, start=0, lines=TAIL_LINES):
    """The last `lines` lines of the file at `path` from byte `start` on."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class Store:
    """The sweep folder of an output root."""

    def __init__(self, output):
        self.output = str(output)
        self.root = Path(output) / SWEEP_DIR

    def run_dir(self, path):
        """The directory of the run at `path` (relative to the output root), as train.py is given it."""
        return f"{self.output}/{path}"

    def record_path(self, run):
        return self.root / "state" / f"{run.path}.json"

    def log_path(self, run):
        return self.root / "logs" / f"{run.path}.log"

    def read(self, run):
        return read_json(self.record_path(run))

    def write(self, run, record):
        write_json(self.record_path(run), {"run": run.path, "time": now(), **record})

    def finished(self, path):
        """Whether the run at `path` is finished: its newest log has a result (tools.results.runlog)."""
        return os.path.isdir(self.run_dir(path)) and read_run(self.run_dir(path)).finished

    def start_log(self, run, attempt, command, where):
        """Append the header of an attempt to the run's log; returns (path, offset of the header)."""
        path = self.log_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            offset = f.tell()
            f.write(f"=== {now()} attempt {attempt} on {socket.gethostname()} {where}: {' '.join(command)}\n")
        return path, offset

    def running_elsewhere(self, run, record=None):
        """Whether the record says another local process runs `run` right now. Records from
        another host cannot be checked from here and count as running. Records written in a
        Slurm job never count: Slurm says whether their job lives (tools.sweep.slurm)."""
        record = self.read(run) if record is None else record
        if not record or record.get("status") != "running" or record.get("backend") == SLURM:
            return False
        if record.get("host") != socket.gethostname():
            return True
        return pid_alive(record["pid"], self.run_dir(run.path))


@dataclass(frozen=True)
class Verdict:
    """What Slurm says about the last job of a run (tools.sweep.slurm): RUNNING, QUEUED, or
    PENDING when the job ended or is gone without finishing the run; `note` says which job and
    what Slurm said."""

    state: str
    job_id: str
    note: str
    stuck: bool = False  # queued for a reason that no waiting resolves


@dataclass
class Classified:
    """What each run of a plan is now (`state[path]`, one of STATES) and why (`note[path]`)."""

    state: dict
    note: dict

    def count(self, runs):
        counts = dict.fromkeys(STATES, 0)
        for run in runs:
            counts[self.state[run.path]] += 1
        return counts


def classify(runs, store, verdicts=None):
    """done (its log has a result), running or queued (its Slurm job, by `verdicts`, {path:
    Verdict}, or a local process by its record and pid), failed (its last record), blocked (its
    training run failed or is blocked), else pending (with why: its Slurm job ended without
    finishing it, or it is unfinished and resumes). `runs` are in plan order: a training run
    comes before its evaluations."""
    verdicts = verdicts or {}
    state, note = {}, {}
    for run in runs:
        record = store.read(run)
        verdict = verdicts.get(run.path)
        if store.finished(run.path):
            state[run.path] = DONE
        elif verdict and verdict.state in (RUNNING, QUEUED):
            state[run.path], note[run.path] = verdict.state, verdict.note
        elif store.running_elsewhere(run, record):
            state[run.path], note[run.path] = RUNNING, f"pid {record['pid']} on {record['host']}"
        elif record and record["status"] == FAILED and not _newer(verdict, record):
            state[run.path], note[run.path] = FAILED, failure_note(record)
        elif run.after and state.get(run.after) in (FAILED, BLOCKED):
            state[run.path], note[run.path] = BLOCKED, f"its training run {run.after} is {state[run.after]}"
        else:
            state[run.path] = PENDING
            why = pending_note(store, run, record, verdict)
            if why:
                note[run.path] = why
    return Classified(state, note)


def pending_note(store, run, record, verdict):
    """Why a run that is not finished is to run (again), where anything says."""
    own = record and verdict and record.get("job_id") == verdict.job_id  # the record of its last job
    if own and record["status"] == BLOCKED:
        return (
            f"blocked in Slurm job {verdict.job_id}: its training run {record['waits_for']} was not finished"
        )
    if own and record["status"] == "interrupted" and record.get("cause") != LOST:
        return f"{verdict.note}; the run: interrupted ({record.get('cause', 'stopped')})"
    if verdict:
        return verdict.note
    if record and record["status"] == "interrupted":
        return f"interrupted ({record.get('cause', 'stopped')}): train.py resumes it"
    if os.path.isdir(store.run_dir(run.path)):
        return "unfinished: train.py resumes it"
    return None


def _newer(verdict, record):
    """Whether the run's last Slurm job is not the one that wrote `record` (it was submitted
    again after that failure)."""
    return verdict is not None and record.get("job_id") != verdict.job_id


def failure_note(record):
    last = record.get("log_tail", "").strip().splitlines()
    reason = f": {last[-1]}" if last else ""
    return f"exit status {record.get('exit_code')} after {record.get('attempt')} attempt(s){reason}"
