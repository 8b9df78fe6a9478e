"""What the sweep prints: the plan (--dry-run), the table per protocol (--status), and the one
live progress line (done/total, running, failed, blocked, ETA from the finished runs' times)."""

import os
import shlex
import sys
import time

from tabulate import tabulate

from tools.sweep.state import BLOCKED, DONE, FAILED, PENDING, QUEUED, RUNNING, STATES


def hms(seconds):
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def print_plan(runs, classified, store, python, out=sys.stdout):
    """Each run: what the sweep would do with it, its directory, what it waits for, its command."""
    label = {
        DONE: "done",
        RUNNING: "running",
        QUEUED: "queued",
        FAILED: "retry",
        BLOCKED: "run",
        PENDING: "run",
    }
    for run in runs:
        state = classified.state[run.path]
        word = "resume" if state == PENDING and os.path.isdir(store.run_dir(run.path)) else label[state]
        line = f"{word:8} {store.run_dir(run.path)}"
        if run.after and classified.state[run.after] != DONE:
            line += f"  (after {store.output}/{run.after})"
        if run.path in classified.note and state != PENDING:
            line += f"  [{classified.note[run.path]}]"
        print(line, file=out)
        if state not in (DONE, RUNNING, QUEUED):
            print(f"{'':8} {shlex.join([python, 'train.py', *run.args])}", file=out)
    counts = classified.count(runs)
    todo = len(runs) - counts[DONE] - counts[RUNNING] - counts[QUEUED]
    print(
        f"# {len(runs)} runs: {counts[DONE]} done, {counts[RUNNING]} running elsewhere, "
        f"{counts[QUEUED]} queued in Slurm, {todo} to run ({counts[FAILED]} failed before)",
        file=out,
    )


def status_tables(runs, classified, out=sys.stdout):
    """One table per protocol, one row per trainer:config, then the failed runs and why."""
    groups = {}
    for run in runs:
        row = groups.setdefault(run.key.protocol, {}).setdefault(f"{run.key.trainer}:{run.key.config}", {})
        state = classified.state[run.path]
        row[state] = row.get(state, 0) + 1
    for protocol, rows in groups.items():
        table = [[name, *(row.get(s, 0) for s in STATES)] for name, row in rows.items()]
        total = sum(sum(r[1:]) for r in table)
        print(f"## {protocol} ({total} runs)\n", file=out)
        print(tabulate(table, ["trainer:config", *STATES], tablefmt="github"), file=out)
        print(file=out)
    failed = [run for run in runs if classified.state[run.path] == FAILED]
    for run in failed:
        print(f"failed: {run.path}: {classified.note[run.path]}", file=out)
    for state in (RUNNING, QUEUED):
        for run in runs:
            if classified.state[run.path] == state:
                print(f"{state}: {run.path}: {classified.note[run.path]}", file=out)
    for run in runs:  # why a run left unfinished is to run again
        if classified.state[run.path] == PENDING and run.path in classified.note:
            print(f"pending: {run.path}: {classified.note[run.path]}", file=out)


class Eta:
    """Remaining time from the durations of the runs finished in this sweep, per kind (training
    runs and evaluations take very different times), divided over the workers."""

    def __init__(self, workers):
        self.workers = workers
        self.seconds = {True: [], False: []}

    def finished(self, run, seconds):
        self.seconds[run.trains].append(seconds)

    def mean(self, trains):
        known = self.seconds[trains] or self.seconds[not trains]
        return sum(known) / len(known) if known else None

    def remaining(self, waiting, running):
        """`waiting`: runs not started; `running`: {run: seconds since it started}."""
        if self.mean(True) is None:
            return None
        total = sum(self.mean(r.trains) for r in waiting)
        total += sum(max(self.mean(r.trains) - elapsed, 0.0) for r, elapsed in running.items())
        return total / self.workers


class Progress:
    """The live progress line: redrawn in place on a terminal, else printed when it changes."""

    def __init__(self, total, out=sys.stderr, queued=False):
        self.total = total
        self.queued = queued  # show queued runs (Slurm's pending jobs) apart from running ones
        self.out = out
        self.tty = out.isatty()
        self.line = ""
        self.printed = ""
        self.start = time.monotonic()

    def update(self, counts, eta_seconds):
        eta = "?" if eta_seconds is None else hms(eta_seconds)
        queued = f" | {counts[QUEUED]} queued" if self.queued else ""
        line = (
            f"[sweep] {counts[DONE]}/{self.total} done | {counts[RUNNING]} running{queued}"
            f" | {counts[FAILED]} failed | {counts[BLOCKED]} blocked"
            f" | elapsed {hms(time.monotonic() - self.start)} | ETA {eta}"
        )
        self.line = line
        if self.tty:
            self.out.write(f"\r\033[K{line}")
            self.out.flush()
        elif line.split(" | elapsed")[0] != self.printed:
            self.printed = line.split(" | elapsed")[0]
            print(line, file=self.out, flush=True)

    def event(self, message):
        """A message on its own line, above the progress line."""
        if self.tty:
            self.out.write(f"\r\033[K{message}\n{self.line}")
            self.out.flush()
        else:
            print(message, file=self.out, flush=True)

    def close(self):
        if self.tty and self.line:
            self.out.write("\n")
            self.out.flush()
