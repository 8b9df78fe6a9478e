"""The local backend: a dynamic pool of workers, each pinned to one GPU (CUDA_VISIBLE_DEVICES), or
CPU workers when no GPU is visible. A worker takes the next run whose training run is done as soon
as it is free (no waves); a failed run is retried, then recorded with the tail of its output, and
the evaluations that need it are blocked while the rest of the sweep goes on. Ctrl-C (or SIGTERM,
SIGHUP) stops every train.py it started, records them as interrupted, and exits: re-running the
same command resumes them.
"""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tools.results.runlog import read_run
from tools.sweep.progress import Eta
from tools.sweep.state import BLOCKED, DONE, FAILED, PENDING, RUNNING, classify, tail

CPU = "cpu"
STOP_GRACE_S = 10.0  # how long a stopped train.py may take to exit before it is killed
TICK_S = 0.2


def visible_gpus():
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        ids = [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",")]
        # CUDA ignores the list from the first invalid entry on; "-1" is the usual "none".
        return ids[: ids.index("-1")] if "-1" in ids else [g for g in ids if g]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = subprocess.run(
        [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return out.stdout.split() if out.returncode == 0 else []


def worker_slots(gpus, jobs_per_gpu):
    """One slot per job that may run at once: `jobs_per_gpu` per GPU, GPUs taken in turn so that
    the first jobs spread over all of them; `jobs_per_gpu` CPU slots (None: leave the environment
    as it is; CPU: hide the GPUs) when there is no GPU."""
    if gpus == [CPU]:
        return [CPU] * jobs_per_gpu
    if not gpus:
        return [None] * jobs_per_gpu
    return [gpu for _ in range(jobs_per_gpu) for gpu in gpus]


def job_env(slot, n_slots):
    env = dict(os.environ)
    if slot not in (None, CPU):
        env["CUDA_VISIBLE_DEVICES"] = slot
        return env
    if slot == CPU:
        env["CUDA_VISIBLE_DEVICES"] = ""
    # CPU jobs side by side would each start one thread per core; share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n_slots)))
    return env


def _die_with_parent():
    """In the child before exec (Linux): SIGTERM when the sweep dies, even by SIGKILL, so that no
    orphaned train.py keeps writing into a run that a re-run starts again."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Job:
    run: object
    slot: object
    proc: subprocess.Popen
    offset: int
    attempt: int
    started: float = field(default_factory=time.monotonic)


class Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


class Pool:
    def __init__(self, runs, store, python, slots, retries, progress):
        self.runs = runs
        self.by_path = {r.path: r for r in runs}
        self.store = store
        self.python = python
        self.slots = slots
        self.free = list(range(len(slots)))
        self.retries = retries
        self.progress = progress
        self.eta = Eta(len(slots))
        self.jobs = {}  # path -> Job
        self.attempts = dict.fromkeys((r.path for r in runs), 0)
        # A run failed or blocked in an earlier sweep is tried again; one that another process
        # runs now is watched until it ends.
        classified = classify(runs, store)
        self.state = {
            path: state if state in (DONE, RUNNING) else PENDING for path, state in classified.state.items()
        }
        self.elsewhere = {r.path for r in runs if self.state[r.path] == RUNNING}

    def counts(self):
        counts = dict.fromkeys((DONE, RUNNING, FAILED, BLOCKED, PENDING), 0)
        for state in self.state.values():
            counts[state] += 1
        return counts

    def run(self):
        """Run every run that is not done; returns the final {path: state}."""
        handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            while self._step():
                self.progress.update(self.counts(), self._eta())
                time.sleep(TICK_S)
        except (KeyboardInterrupt, Interrupted) as err:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
            self._stop(str(err) or "Ctrl-C")
            raise KeyboardInterrupt from None
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
            self.progress.update(self.counts(), self._eta())
            self.progress.close()
        return self.state

    def _step(self):
        """Reap, watch, start; False when nothing runs and nothing can start."""
        for job in list(self.jobs.values()):
            if job.proc.poll() is not None:
                self._finish(job)
        for path in list(self.elsewhere):
            run = self.by_path[path]
            if not self.store.running_elsewhere(run):
                self.elsewhere.discard(path)
                self.state[path] = DONE if self.store.finished(run.path) else PENDING
        for run in self.runs:
            if not self.free:
                break
            if self.state[run.path] == PENDING and self._ready(run):
                self._start(run)
        # Nothing running means nothing is left to start: a run not started waits for a failed
        # or blocked one, and _ready has blocked it.
        return bool(self.jobs or self.elsewhere)

    def _ready(self, run):
        if run.after is None or self.state[run.after] == DONE:
            # A process started since this sweep began may have taken it meanwhile.
            if self.store.running_elsewhere(run):
                self.state[run.path] = RUNNING
                self.elsewhere.add(run.path)
                return False
            return True
        if self.state[run.after] in (FAILED, BLOCKED):
            self._block(run, run.after)
        return False

    def _start(self, run):
        slot_index = self.free.pop(0)
        slot = self.slots[slot_index]
        self.attempts[run.path] += 1
        attempt = self.attempts[run.path]
        command = [self.python, "train.py", *run.args]
        where = "CPU" if slot in (None, CPU) else f"GPU {slot}"
        log_path, offset = self.store.start_log(run, attempt, command, where)
        with open(log_path, "a") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                command,
                env=job_env(slot, len(self.slots)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the sweep, which stops its jobs cleanly
                # The sweep starts no threads, so preexec_fn is safe here.
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        self.jobs[run.path] = Job(run, slot_index, proc, offset, attempt)
        self.state[run.path] = RUNNING
        self.store.write(
            run,
            {
                "status": RUNNING,
                "backend": "local",
                "host": socket.gethostname(),
                "pid": proc.pid,
                "sweep_pid": os.getpid(),
                "gpu": None if slot in (None, CPU) else slot,
                "attempt": attempt,
                "command": command,
                "log": str(log_path),
            },
        )

    def _finish(self, job):
        del self.jobs[job.run.path]
        self.free.append(job.slot)
        self.free.sort()
        seconds = time.monotonic() - job.started
        code = job.proc.returncode
        run = job.run
        log_path = self.store.log_path(run)
        if code == 0 and self.store.finished(run.path):
            self.state[run.path] = DONE
            self.eta.finished(run, seconds)
            self.store.write(
                run, {"status": "succeeded", "attempt": job.attempt, "seconds": round(seconds, 1)}
            )
            accuracy = read_run(self.store.run_dir(run.path)).accuracy
            self.progress.event(f"done in {seconds:4.0f} s, accuracy {accuracy:6.2f} %: {run.path}")
            return
        last_lines = tail(log_path, job.offset)
        if code == 0:
            last_lines += "\n(train.py exited with status 0, but the run's newest log has no result block)"
        record = {"status": FAILED, "exit_code": code, "attempt": job.attempt, "log": str(log_path)}
        self.store.write(run, {**record, "seconds": round(seconds, 1), "log_tail": last_lines})
        last = last_lines.strip().splitlines()[-1:] or [""]
        if job.attempt <= self.retries:
            self.state[run.path] = PENDING
            attempts = f"{job.attempt + 1}/{self.retries + 1}"
            self.progress.event(f"failed (exit status {code}), retrying ({attempts}): {run.path}: {last[0]}")
            return
        self.state[run.path] = FAILED
        self.progress.event(
            f"FAILED after {job.attempt} attempt(s) (exit status {code}): {run.path}\n"
            f"  log: {log_path}\n  " + "\n  ".join(last_lines.splitlines()[-5:])
        )

    def _block(self, run, cause):
        if self.state[run.path] != PENDING:
            return
        self.state[run.path] = BLOCKED
        self.store.write(run, {"status": BLOCKED, "waits_for": cause})
        self.progress.event(f"blocked (its training run {cause} did not finish): {run.path}")

    def _eta(self):
        waiting = [r for r in self.runs if self.state[r.path] == PENDING]
        now = time.monotonic()
        return self.eta.remaining(waiting, {j.run: now - j.started for j in self.jobs.values()})

    def _stop(self, reason):
        """Stop every train.py of this sweep: SIGTERM to its process group, SIGKILL after
        STOP_GRACE_S; each is recorded as interrupted (train.py resumes it on the next run)."""
        self.progress.event(f"stopping {len(self.jobs)} running job(s) ({reason}) ...")
        for job in self.jobs.values():
            _signal_group(job.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(j.proc.poll() is None for j in self.jobs.values()):
            time.sleep(0.05)
        for job in self.jobs.values():
            if job.proc.poll() is None:
                _signal_group(job.proc, signal.SIGKILL)
            job.proc.wait()
            self.state[job.run.path] = PENDING
            self.store.write(job.run, {"status": "interrupted", "attempt": job.attempt})
        self.jobs = {}


def _signal_group(proc, signum):
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
