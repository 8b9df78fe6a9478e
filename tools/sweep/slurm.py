"""The Slurm backend, through submitit: the runs to do go out as job arrays, the training runs
(and everything that waits for nothing) first, the evaluations as a second array that depends on
the first (`--dependency=afterany`: an evaluation whose training failed is recorded as blocked by
its own job, tools.sweep.job), and, unless --wait, a last job that writes the tables.

`<output>/sweep/slurm/jobs/<run path>.json` names the job each run was last submitted as; each
invocation's submission files, pickles and job outputs are in a folder of their own,
`<output>/sweep/slurm/<date>-<time>-<pid>/`. Whether a run's job lives is what Slurm says about
it now (tools.sweep.scheduler: squeue, then sacct, then its absence), never a record alone. A
re-run of the same command submits what is missing: runs not finished whose last job is neither
queued nor running (failed, cancelled, timed out, killed, or gone from Slurm); a record that
still says "running" for a job Slurm no longer runs becomes "interrupted". Queued evaluations of
a training run submitted again are cancelled and submitted again after it. With `--executor
local` the same jobs run as local processes through submitit's local executor (no cluster
needed); it has no dependencies, so the sweep waits for the first array before it submits the
second.
"""

import contextlib
import io
import os
import shutil
import sys
import time

import submitit
from submitit.core.utils import FailedJobError

from tools.sweep import scheduler
from tools.sweep.job import INTERRUPTED, MAX_REQUEUES, JobSpec, RunJob, tables_job
from tools.sweep.state import (
    BLOCKED,
    DONE,
    FAILED,
    LOST,
    PENDING,
    QUEUED,
    RUNNING,
    SLURM,
    Verdict,
    classify,
    now,
    read_json,
    write_json,
)

LOCAL_POLL_S = 0.5  # --executor local: how often the sweep looks at its local jobs
TABLES_FILE = "tables.json"  # in <output>/sweep/slurm: the last tables job
# The tables job reads logs and draws a few figures: no GPU, one CPU, little memory and time.
TABLES_JOB = {"timeout_min": 30, "cpus_per_task": 1, "mem_gb": 4, "gpus_per_node": 0}
# What an ended job's state means for its run.
ENDED_WHY = {
    "TIMEOUT": "it reached --time (a re-run resumes it from its last checkpoint)",
    "OUT_OF_MEMORY": "it ran out of memory (raise --mem)",
    "NODE_FAIL": "its node failed",
    "COMPLETED": "but the run has no result",
}


class SubmissionRefused(Exception):
    pass


def parse_time(text):
    """Slurm's --time formats (minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    days-hours:minutes, days-hours:minutes:seconds) in whole minutes, rounded up."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    else:
        scale = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
        total = sum(p * s for p, s in zip(parts, scale))
    return max(1, -(-total // 60))


def job_path(store, path):
    return store.root / "slurm" / "jobs" / f"{path}.json"


def last_jobs(store, runs):
    """{path: Slurm job id} of the runs not finished whose last job is a Slurm job: the one
    they were last submitted as, else the one their record names."""
    jobs = {}
    for run in runs:
        if store.finished(run.path):
            continue
        job = read_json(job_path(store, run.path))
        record = store.read(run) or {}
        if job and job["executor"] == "slurm":
            jobs[run.path] = job["job_id"]
        elif not job and record.get("backend") == SLURM:
            jobs[run.path] = record["job_id"]
    return jobs


def verdict(job_id, answer, sacct_problem):
    """What Slurm's `answer` about job `job_id` (None: neither squeue nor sacct knows it)
    means for its run."""
    name = f"Slurm job {job_id}"
    if answer is None:
        why = f"sacct cannot tell ({sacct_problem})" if sacct_problem else "sacct has no row for it"
        return Verdict(PENDING, job_id, f"{name} is no longer in the queue and {why}")
    if answer.queued:
        note = f"{name}: {answer.state} ({answer.reason})"
        if answer.never_starts:
            note += f": it can never start as submitted; scancel {job_id} and re-run with other options"
        return Verdict(QUEUED, job_id, note, stuck=answer.never_starts)
    if answer.live:
        return Verdict(RUNNING, job_id, f"{name}: {answer.state} on {answer.node}")
    if answer.state not in scheduler.ENDED_STATES:  # sacct's row was never closed
        return Verdict(PENDING, job_id, f"{name} is no longer in the queue (sacct: {answer.state})")
    why = ENDED_WHY.get(answer.state)
    return Verdict(PENDING, job_id, f"{name} ended: {answer.state}" + (f", {why}" if why else ""))


def ask(store, runs):
    """{path: Verdict} of the runs whose last job is a Slurm job. Raises
    scheduler.SlurmUnreachable when squeue cannot be asked."""
    jobs = last_jobs(store, runs)
    answers, sacct_problem = scheduler.ask(jobs.values())
    return {path: verdict(job_id, answers.get(job_id), sacct_problem) for path, job_id in jobs.items()}


def ask_or_assume(store, runs):
    """ask(), or, where Slurm cannot be asked (no squeue on this machine, or it failed), every
    such run counted as running, with a warning: the sweep then leaves them alone rather than
    run them a second time."""
    try:
        return ask(store, runs)
    except scheduler.SlurmUnreachable as err:
        jobs = last_jobs(store, runs)
        print(
            f"warning: cannot ask Slurm about {len(jobs)} submitted job(s) of {store.root} ({err}); "
            "they count as running (run this where squeue works to know)",
            file=sys.stderr,
        )
        note = f"unknown: cannot ask Slurm ({err})"
        return {
            path: Verdict(RUNNING, job_id, f"Slurm job {job_id}: {note}") for path, job_id in jobs.items()
        }


def settle(store, runs, verdicts):
    """Records that say "running" in a Slurm job that Slurm no longer runs become
    "interrupted" (LOST), with what Slurm said then; returns their paths."""
    settled = []
    for run in runs:
        v = verdicts.get(run.path)
        record = store.read(run)
        if not (v and v.state == PENDING and record and record["status"] == RUNNING):
            continue
        if record.get("backend") == SLURM and record.get("job_id") == v.job_id:
            store.write(run, {**record, "status": INTERRUPTED, "cause": LOST, "slurm": v.note})
            settled.append(run.path)
    return settled


def job_name(runs, kind):
    """`<protocols>:<trainers>:<kind>`, e.g. base2new:CoOp+MoCoOp:train, as squeue shows it."""
    protocols = "+".join(dict.fromkeys(r.key.protocol for r in runs))
    trainers = "+".join(dict.fromkeys(r.key.trainer for r in runs))
    return f"{protocols}:{trainers}:{kind}"


def array_kind(runs):
    """What a job array holds, for its name: training runs, evaluations, or both."""
    trains = {r.trains for r in runs}
    return "runs" if len(trains) == 2 else "train" if True in trains else "eval"


class Slurm:
    def __init__(self, store, args):
        self.store = store
        self.args = args
        # This invocation's submission files, pickles and job outputs.
        self.folder = store.root / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    def ask(self, runs):
        return ask(self.store, runs) if self.args.executor == "slurm" else {}

    def executor(self, name, dependency=None, resources=None):
        args = self.args
        ex = submitit.AutoExecutor(
            folder=self.folder, cluster=args.executor, slurm_max_num_timeout=MAX_REQUEUES
        )
        limit = parse_time(args.time)
        params = {
            "name": name,
            "timeout_min": limit,
            "gpus_per_node": args.gpus_per_job,
            "cpus_per_task": args.cpus_per_job,
            "mem_gb": args.mem,
            **(resources or {}),
            "slurm_partition": args.partition,
            "slurm_array_parallelism": args.array_parallelism,
            # USR2 this long before the limit (tools.sweep.job): 90 s, less for short limits.
            "slurm_signal_delay_s": min(90, limit * 30),
            "slurm_setup": args.slurm_setup or None,
            "slurm_additional_parameters": dict(o.split("=", 1) for o in args.slurm_opt) or None,
            "slurm_dependency": dependency,
        }
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def submit(self, submission, what):
        """`submission()` (submitit's); when sbatch refuses it, its files are removed and
        SubmissionRefused says what sbatch said."""
        self.folder.mkdir(parents=True, exist_ok=True)
        before = set(self.folder.iterdir())
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's complaint
                return submission()
        except FailedJobError as err:
            for path in set(self.folder.iterdir()) - before:
                if path.is_file() or path.is_symlink():
                    path.unlink()
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty: nothing else of this invocation is there
            complaint = "; ".join(line.removeprefix("sbatch: error: ") for line in str(err).splitlines())
            raise SubmissionRefused(f"sbatch refused the {what}: {complaint}") from None

    def submit_array(self, runs, kind, dependency=None):
        """One job array of `runs`; records each run's job and returns the jobs."""
        ex = self.executor(job_name(runs, kind), dependency)
        specs = [
            JobSpec(r, self.store.output, self.args.python, self.args.retries, os.getcwd()) for r in runs
        ]
        what = f"{len(runs)} {'evaluations' if kind == 'eval' else 'runs'}"
        jobs = self.submit(lambda: ex.map_array(RunJob(), specs), what)
        for run, job in zip(runs, jobs):
            record = {"job_id": job.job_id, "executor": self.args.executor, "folder": str(self.folder)}
            write_json(job_path(self.store, run.path), {**record, "submitted": now()})
        ids = jobs[0].job_id.split("_")[0] if "_" in jobs[0].job_id else " ".join(j.job_id for j in jobs)
        after = f", {dependency}" if dependency else ""
        print(
            f"submitted {what} as job(s) {ids} ({ex.parameters.get('job_name', kind)}{after})",
            file=sys.stderr,
        )
        return jobs

    def run(self, runs, progress):
        """Submit what is missing; returns the jobs. With --executor local, waits for the first
        array before it submits the second (that executor has no dependencies)."""
        verdicts = self.ask(runs)
        settle(self.store, runs, verdicts)
        classified = classify(runs, self.store, verdicts)
        live = {path for path, state in classified.state.items() if state in (RUNNING, QUEUED)}
        todo = [r for r in runs if classified.state[r.path] not in (DONE, RUNNING, QUEUED)]
        todo_paths = {r.path for r in todo}
        # Queued evaluations of a training run submitted again go after it.
        requeue = [r for r in runs if r.after in todo_paths and classified.state[r.path] == QUEUED]
        if requeue:
            complaint = scheduler.cancel([verdicts[r.path].job_id for r in requeue])
            if complaint:
                print(f"warning: scancel: {complaint}", file=sys.stderr)
            todo += requeue
            todo_paths |= {r.path for r in requeue}
            live -= todo_paths
        if not todo:
            print(f"nothing to submit: the {len(runs)} runs are done, queued or running", file=sys.stderr)
            return []
        todo.sort(key=runs.index)
        first = [r for r in todo if r.after not in todo_paths and r.after not in live]
        second = [r for r in todo if r not in first]
        jobs = self.submit_array(first, array_kind(first)) if first else []
        if not second:
            return jobs
        if self.args.executor == "local":
            self.wait(runs, progress, jobs)
            return jobs + self.submit_array(second, "eval")
        after = {job.job_id.split("_")[0] for job in jobs}
        after |= {verdicts[r.after].job_id for r in second if r.after in live}
        return jobs + self.submit_array(second, "eval", "afterany:" + ":".join(sorted(after)))

    def previous_tables_job(self):
        """The tables job an earlier invocation submitted, if Slurm runs it now (its id); one
        still queued is cancelled: this invocation writes the tables, and two writers at once
        could mix their files."""
        job = read_json(self.store.root / "slurm" / TABLES_FILE)
        if not job:
            return None
        try:
            answer = scheduler.ask([job["job_id"]])[0].get(job["job_id"])
        except scheduler.SlurmUnreachable:
            return None
        if answer and answer.queued:
            scheduler.cancel([job["job_id"]])
            print(
                f"cancelled the queued tables job {job['job_id']}: this invocation writes them",
                file=sys.stderr,
            )
            return None
        return job["job_id"] if answer and answer.live else None

    def report_job(self, runs, jobs, commands):
        """A job that runs `commands` (the tables) once every job of the sweep's runs that Slurm
        still has has ended, whoever submitted it (at least `jobs`, those submitted now), and a
        tables job of an earlier invocation that runs now."""
        live = [job.job_id for job in jobs] + [j for j in [self.previous_tables_job()] if j]
        with contextlib.suppress(scheduler.SlurmUnreachable):
            live += [v.job_id for v in self.ask(runs).values() if v.state in (RUNNING, QUEUED)]
        ids = sorted({job_id.split("_")[0] for job_id in live})
        dependency = "afterany:" + ":".join(ids) if ids else None
        ex = self.executor(job_name(runs, "tables"), dependency, TABLES_JOB)
        job = self.submit(lambda: ex.submit(tables_job, *commands, os.getcwd()), "tables job")
        write_json(self.store.root / "slurm" / TABLES_FILE, {"job_id": job.job_id, "submitted": now()})
        after = f" (after {', '.join(ids)})" if ids else ""
        print(f"tables: job {job.job_id}{after} writes {self.store.output}/tables", file=sys.stderr)
        return job

    def wait(self, runs, progress, jobs=()):
        """Wait until Slurm has nothing left for the runs (none of their jobs is queued or
        running, whoever submitted them), or, with --executor local, until `jobs` are done;
        shows the progress line and each run that ends without finishing. Stops early when
        every job left is queued for a reason that no waiting resolves. Returns the last
        classification."""
        poll = self.args.poll if self.args.executor == "slurm" else LOCAL_POLL_S
        reported = {}
        while True:
            try:
                verdicts = self.ask(runs)
            except scheduler.SlurmUnreachable as err:
                progress.event(f"cannot ask Slurm ({err}); asking again in {poll:g} s")
                time.sleep(poll)
                continue
            settle(self.store, runs, verdicts)
            classified = classify(runs, self.store, verdicts)
            progress.update(classified.count(runs), None)
            self.report(runs, classified, verdicts, reported, progress)
            live = [p for p, s in classified.state.items() if s in (RUNNING, QUEUED)]
            if self.args.executor == "local" and all(job.done() for job in jobs):
                return classified
            if self.args.executor == "slurm" and not live:
                return classified
            if self.args.executor == "slurm" and set(live) <= stuck(runs, classified, verdicts):
                progress.event(
                    f"stopped waiting: the {len(live)} job(s) left can never start as submitted, or "
                    "wait for one that cannot (--status shows why)"
                )
                return classified
            time.sleep(poll)

    @staticmethod
    def report(runs, classified, verdicts, reported, progress):
        """An event line for each run that newly failed, is blocked, ended without finishing, or
        is queued for a reason that no waiting resolves."""
        for run in runs:
            state, note = classified.state[run.path], classified.note.get(run.path)
            v = verdicts.get(run.path)
            shown = state in (FAILED, BLOCKED) or (state == PENDING and v) or (v and v.stuck)
            if shown and reported.get(run.path) != note:
                reported[run.path] = note
                progress.event(f"{state}: {run.path}: {note}")


def stuck(runs, classified, verdicts):
    """The paths of the runs whose job can never start: queued for a reason that no waiting
    resolves, or queued after a training run whose job cannot."""
    paths = set()
    for run in runs:  # plan order: a training run before its evaluations
        v = verdicts.get(run.path)
        if v and (v.stuck or (v.state == QUEUED and run.after in paths)):
            paths.add(run.path)
    return paths


def check_slurm(args):
    """An error message when this machine cannot submit to Slurm, else None."""
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    if args.executor == "slurm" and missing:
        return (
            f"there is no {' or '.join(missing)} on this machine: run the sweep with --backend slurm "
            "where Slurm's commands are (a login node), or try it with --executor local"
        )
    return None
