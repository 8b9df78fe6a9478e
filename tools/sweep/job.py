"""What one Slurm job of a sweep runs (pickled by submitit, so importable and small): one run's
train.py, retried, with the same records as the local pool. An evaluation whose training run is
not finished when its job starts (the job array it depends on ended, but that run failed) is
recorded as blocked and never started on a missing model.

Stopping: a job that Slurm stops (scancel, preemption, the time limit) gets SIGTERM; its train.py
is stopped and the run recorded as interrupted (train.py resumes it from its last checkpoint when
it is submitted again). Before the time limit, Slurm sends submitit's warning signal (USR2,
`--signal`); submitit then calls RunJob.checkpoint, which stops train.py and records the run as
interrupted by the time limit, and requeues the job (`scontrol requeue`: same job id, pending
again), which runs the same run again from its checkpoint. After `MAX_REQUEUES` requeues of one
job, submitit gives up and the record says so; a re-run of the sweep submits the run again.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable

from tools.sweep.state import BLOCKED, FAILED, RUNNING, SLURM, Store, tail

INTERRUPTED = "interrupted"
TIME_LIMIT = "time limit"
MAX_REQUEUES = 3  # submitit's max_num_timeout: requeues after the time limit, per job
STOP_GRACE_S = 10.0  # how long a stopped train.py may take to exit before it is killed


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


def job_fields():
    """What every record written in a job names: the job, and whether it is a Slurm job (then
    Slurm, not the pid, says whether it lives) or one of submitit's local executor."""
    fields = {"job_id": job_id(), "backend": SLURM if "SLURM_JOB_ID" in os.environ else "submitit-local"}
    if os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
        fields["requeued"] = int(os.environ["SLURM_RESTART_COUNT"])
    return fields


def train_env():
    """train.py's environment: one OpenMP thread per CPU of the job (as the local backend gives
    each CPU job its share), unless the job's environment sets it."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    return env


class RunJob(Checkpointable):
    """The function of the runs' job arrays, `RunJob()(spec)`: run_job, and submitit's
    checkpoint for the time limit."""

    def __init__(self):
        self.proc = None  # the train.py running now, for checkpoint()
        self.ending = False  # checkpoint() ran: this job starts no more train.py

    def __getstate__(self):
        return {}  # a running process is no part of the job submitit requeues

    def __setstate__(self, state):
        self.__init__()

    def __call__(self, spec):
        return run_job(spec, self)

    def checkpoint(self, spec):
        """Called by submitit when the time limit is near (USR2): stop train.py and record why,
        before submitit requeues the job (whose end then sends SIGTERM, which must not rewrite
        that record)."""
        self.ending = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(self.proc)
        Store(spec.output).write(
            spec.run, {"status": INTERRUPTED, "cause": f"{TIME_LIMIT}: requeued", **job_fields()}
        )
        return super().checkpoint(spec)


def stop(proc):
    """SIGTERM to train.py's process group, SIGKILL after STOP_GRACE_S."""
    if proc is None or _exited(proc):
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_GRACE_S
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _exited(proc):
            return


def _exited(proc):
    """Whether `proc` has exited (then reaped), asked without Popen's lock: in submitit's signal
    handler, the interrupted `proc.wait()` holds it, and `poll()` would never see the exit."""
    if proc.returncode is not None:
        return True
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:  # reaped by Popen meanwhile
        return True
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    return True


def run_job(spec, runner=None):
    """Run `spec.run` unless it is finished or its training run is not; returns what happened
    ("done", "blocked", "succeeded"); raises after the last failed attempt so that the scheduler
    shows the job as failed. `runner` (a RunJob) is told the running train.py."""
    os.chdir(spec.cwd)
    store, run = Store(spec.output), spec.run
    if store.finished(run.path):
        return "done"
    if run.after and not store.finished(run.after):
        store.write(run, {"status": BLOCKED, "waits_for": run.after, **job_fields()})
        return "blocked"
    # SIGCONT comes with Slurm's USR2; submitit's handler for it logs, and an exception that
    # the USR2 handler raises inside that logging call is swallowed by the logging module.
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _stopped)}
    previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, signal.SIG_DFL)
    try:
        for attempt in range(1, spec.retries + 2):
            code, log_path, offset = _attempt(spec, store, attempt, runner or RunJob())
            if code == 0 and store.finished(run.path):
                store.write(run, {"status": "succeeded", "attempt": attempt, **job_fields()})
                return "succeeded"
            last_lines = tail(log_path, offset)
            store.write(
                run,
                {
                    "status": FAILED,
                    "exit_code": code,
                    "attempt": attempt,
                    **job_fields(),
                    "log": str(log_path),
                    "log_tail": last_lines,
                },
            )
        raise RuntimeError(
            f"{run.path} failed after {attempt} attempt(s) (exit status {code}); log: {log_path}"
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _after_checkpoint(runner, store, run):
    """End the job if RunJob.checkpoint ran but submitit's handler did not end it (its
    exception lost in an interrupted handler): the time limit is near and no requeue is coming."""
    if runner.ending:
        cause = f"{TIME_LIMIT}: not requeued (submitit requeues a job {MAX_REQUEUES} times at most)"
        store.write(run, {"status": INTERRUPTED, "cause": cause, **job_fields()})
        raise UncompletedJobError(cause)


def _attempt(spec, store, attempt, runner):
    run = spec.run
    _after_checkpoint(runner, store, run)
    command = [spec.python, "train.py", *run.args]
    env = train_env()
    where = f"job {job_id()}, CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')}"
    where += f", OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
    if "requeued" in job_fields():
        where += f", requeued {job_fields()['requeued']} time(s)"
    log_path, offset = store.start_log(run, attempt, command, where)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        runner.proc = proc
        store.write(
            run,
            {
                "status": RUNNING,
                **job_fields(),
                "host": socket.gethostname(),
                "pid": proc.pid,
                "attempt": attempt,
                "command": command,
                "log": str(log_path),
            },
        )
        try:
            code = proc.wait()
        except SystemExit:  # submitit requeued the job after RunJob.checkpoint recorded why
            raise
        except UncompletedJobError as err:  # the time limit, and submitit requeues no more
            store.write(run, {"status": INTERRUPTED, "cause": f"{TIME_LIMIT}: {err}", **job_fields()})
            raise
        except (KeyboardInterrupt, Stopped) as err:
            stop(proc)
            cause = f"{str(err) or 'SIGINT'}: cancelled, preempted or past the time limit"
            store.write(run, {"status": INTERRUPTED, "cause": cause, "attempt": attempt, **job_fields()})
            print(f"stopped: {run.path} recorded as interrupted", file=sys.stderr)
            raise
        finally:
            runner.proc = None
    _after_checkpoint(runner, store, run)
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
