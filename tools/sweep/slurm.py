"""The Slurm backend, through submitit: the runs to do go out as job arrays, the training runs
(and everything that waits for nothing) first, the evaluations as a second array that depends on
the first (`--dependency=afterany`: an evaluation whose training failed is recorded as blocked by
its own job, tools.sweep.job), and, unless --wait, a last job that writes the tables.

`<output>/sweep/slurm/jobs/<run path>.json` names the job each run was last submitted as. A re-run
of the same command asks sacct about those jobs and submits only what is missing: runs that are
not finished and whose job is not queued or running (failed, cancelled, timed out, never
submitted). Queued evaluations of a training run submitted again are cancelled and submitted
again after it. With `--executor local` the same jobs run as local processes through submitit's
local executor (no cluster needed); it has no dependencies, so the sweep waits for the first
array before it submits the second.
"""

import os
import shutil
import sys
import time

import submitit

from tools.sweep.job import JobSpec, run_job, tables_job
from tools.sweep.state import DONE, RUNNING, classify, read_json, write_json

# sacct states of a job that may still run the run; UNKNOWN: sacct does not know the job (yet).
LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}
FINAL = {"succeeded", "failed", "blocked", "interrupted"}
POLL_S = {"local": 0.5, "slurm": 30.0}


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


def live_jobs(store, runs):
    """{path: note} of the runs whose last Slurm job may still run them, by sacct (through
    submitit): queued, running, or unknown to sacct (just submitted). Jobs of submitit's local
    executor live only as long as the sweep that waits for them, so they are not asked about."""
    submitted = {}
    for run in runs:
        job = read_json(job_path(store, run.path))
        record = store.read(run) or {}
        if (
            job
            and job["executor"] == "slurm"
            and not (record.get("job_id") == job["job_id"] and record.get("status") in FINAL)
        ):
            submitted[run.path] = job["job_id"]
    if not submitted:
        return {}
    if shutil.which("sacct") is None:
        print(
            f"warning: no sacct here to ask Slurm about {len(submitted)} submitted job(s) of {store.root}; "
            "they count as not running",
            file=sys.stderr,
        )
        return {}
    jobs = {path: submitit.SlurmJob(store.root / "slurm", job_id) for path, job_id in submitted.items()}
    states = {path: job.state.split()[0] for path, job in jobs.items()}
    return {path: f"Slurm job {jobs[path].job_id}: {s}" for path, s in states.items() if s in LIVE}


class Slurm:
    def __init__(self, store, args):
        self.store = store
        self.args = args
        self.folder = store.root / "slurm"

    def live(self, runs):
        return live_jobs(self.store, runs)

    def executor(self, dependency=None, gpus=None):
        args = self.args
        ex = submitit.AutoExecutor(folder=self.folder, cluster=args.executor)
        params = {
            "name": "sweep",
            "timeout_min": parse_time(args.time),
            "gpus_per_node": args.gpus_per_job if gpus is None else gpus,
            "cpus_per_task": args.cpus_per_job,
            "mem_gb": args.mem,
            "slurm_partition": args.partition,
            "slurm_array_parallelism": args.array_parallelism,
            "slurm_setup": args.slurm_setup or None,
            "slurm_additional_parameters": dict(o.split("=", 1) for o in args.slurm_opt) or None,
            "slurm_dependency": dependency,
        }
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return ex

    def submit_array(self, runs, what, dependency=None):
        """One job array of `runs`; records each run's job and returns the jobs."""
        ex = self.executor(dependency)
        specs = [
            JobSpec(r, self.store.output, self.args.python, self.args.retries, os.getcwd()) for r in runs
        ]
        jobs = ex.map_array(run_job, specs)
        for run, job in zip(runs, jobs):
            write_json(job_path(self.store, run.path), {"job_id": job.job_id, "executor": self.args.executor})
        ids = jobs[0].job_id.split("_")[0] if "_" in jobs[0].job_id else " ".join(j.job_id for j in jobs)
        after = f", {dependency}" if dependency else ""
        print(f"submitted {len(runs)} {what} as job(s) {ids}{after}", file=sys.stderr)
        return jobs

    def run(self, runs, progress):
        """Submit what is missing; returns the jobs. With --executor local, waits for the first
        array before it submits the second (that executor has no dependencies)."""
        live = self.live(runs)
        classified = classify(runs, self.store, live)
        todo = [r for r in runs if classified.state[r.path] not in (DONE, RUNNING)]
        todo_paths = {r.path for r in todo}
        for run in runs:  # queued evaluations of a training run submitted again
            if run.after in todo_paths and run.path in live:
                submitit.SlurmJob(self.folder, self.job_id(run.path)).cancel(check=False)
                todo.append(run)
                todo_paths.add(run.path)
        if not todo:
            print(f"nothing to submit: the {len(runs)} runs are done, queued or running", file=sys.stderr)
            return []
        todo.sort(key=runs.index)
        first = [r for r in todo if r.after not in todo_paths and r.after not in live]
        second = [r for r in todo if r not in first]
        jobs = self.submit_array(first, "runs") if first else []
        if not second:
            return jobs
        if self.args.executor == "local":
            self.wait(jobs, runs, progress)
            return jobs + self.submit_array(second, "evaluations")
        after = {job.job_id.split("_")[0] for job in jobs}
        after |= {self.job_id(r.after) for r in second if r.after in live}
        return jobs + self.submit_array(second, "evaluations", "afterany:" + ":".join(sorted(after)))

    def job_id(self, path):
        return read_json(job_path(self.store, path))["job_id"]

    def report_job(self, jobs, commands):
        """A job that runs `commands` (the tables) once every job of `jobs` has ended."""
        ids = sorted({job.job_id.split("_")[0] for job in jobs})
        ex = self.executor(dependency="afterany:" + ":".join(ids), gpus=0)
        job = ex.submit(tables_job, *commands, os.getcwd())
        print(
            f"tables: job {job.job_id} (after {', '.join(ids)}) writes {self.store.output}/tables",
            file=sys.stderr,
        )
        return job

    def wait(self, jobs, runs, progress):
        """Wait for `jobs`, showing the progress line from the runs' records."""
        while not all(job.done() for job in jobs):
            progress.update(classify(runs, self.store, self.live(runs)).count(runs), None)
            time.sleep(POLL_S[self.args.executor])
        progress.update(classify(runs, self.store, self.live(runs)).count(runs), None)
