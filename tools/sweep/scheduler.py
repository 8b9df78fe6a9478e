"""What Slurm itself can still say about jobs: squeue first (every job it lists is queued, running
or ending), then sacct for the jobs squeue no longer lists (how they ended), and last the
scheduler's absence of the job: neither knows it (an array task cancelled while pending has no
accounting row; with accounting storage disabled sacct knows nothing at all).

Asked with the Slurm commands directly, not through submitit's status cache, which calls every job
it cannot find UNKNOWN and keeps it "not done" for ever.
"""

import re
import shutil
import subprocess
from dataclasses import dataclass

ASK_TIMEOUT_S = 120
# squeue states of a job that waits to start (again); every other state squeue lists is live.
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
# States of a job that has ended (sacct's, and squeue's for a job that just ended).
ENDED_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
}
# Pending reasons that no waiting resolves: the job asks for what its partition, account or
# dependencies can never give (e.g. more CPUs than any node of the partition has).
NEVER_STARTS = {
    "BadConstraints",
    "DependencyNeverSatisfied",
    "InvalidAccount",
    "InvalidQOS",
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
}


class SlurmUnreachable(Exception):
    """squeue is missing or failed: nothing can be said about any job."""


@dataclass(frozen=True)
class Answer:
    """What Slurm says about one job: its state (squeue's or sacct's word), the pending reason,
    the node, and which command said it."""

    state: str
    reason: str = ""
    node: str = ""
    source: str = "squeue"

    @property
    def queued(self):
        return self.source == "squeue" and self.state in QUEUED_STATES

    @property
    def live(self):
        """Whether the job may still run: squeue lists it and not as ended."""
        return self.source == "squeue" and self.state not in ENDED_STATES

    @property
    def never_starts(self):
        return self.queued and self.reason in NEVER_STARTS


def array_ids(field):
    """The job ids of one squeue or sacct JobID field: `12`, `12_3`, or a range of array tasks
    not started yet, `12_[0-3,7%4]`."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", field)
    if not match:
        return [field]
    base, ids = match.group(1), []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def _run(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=ASK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 1, "", f"no answer in {ASK_TIMEOUT_S} s")


def _rows(text, width):
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) == width and fields[0]:
            yield fields


def squeue(bases):
    """{job id: Answer} of the jobs squeue lists among the jobs (or arrays) `bases`."""
    if shutil.which("squeue") is None:
        raise SlurmUnreachable("there is no squeue on this machine")
    out = _run(["squeue", "--noheader", "--array", f"--jobs={','.join(bases)}", "--format=%i|%T|%r|%N"])
    if out.returncode != 0:
        # Asked about one job only, squeue fails when it no longer knows it; about several, it
        # lists those it knows.
        if "Invalid job id" in out.stderr:
            return {}
        raise SlurmUnreachable(f"squeue failed: {out.stderr.strip() or f'exit status {out.returncode}'}")
    answers = {}
    for field, state, reason, node in _rows(out.stdout, 4):
        for job_id in array_ids(field):
            answers[job_id] = Answer(state.split()[0], reason, node)
    return answers


def sacct(bases):
    """({job id: Answer} of the jobs sacct has rows for, or why it has none)."""
    if shutil.which("sacct") is None:
        return {}, "there is no sacct on this machine"
    out = _run(
        ["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State,Reason,NodeList"]
        + [f"--jobs={','.join(bases)}"]
    )
    if out.returncode != 0:
        return {}, f"sacct failed: {out.stderr.strip() or f'exit status {out.returncode}'}"
    answers = {}
    for field, state, reason, node in _rows(out.stdout, 4):
        for job_id in array_ids(field):
            # "CANCELLED by 0": the state, without who cancelled it.
            answers[job_id] = Answer(state.split()[0], reason, node, source="sacct")
    return answers, ""


def ask(job_ids):
    """({job id: Answer} for the jobs of `job_ids` that squeue or sacct knows, why sacct said
    nothing, if it did not). A job in neither is gone. Raises SlurmUnreachable when squeue
    cannot be asked."""
    job_ids = set(job_ids)
    if not job_ids:
        return {}, ""
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    answers = {k: v for k, v in squeue(bases).items() if k in job_ids}
    missing = job_ids - {k for k, v in answers.items() if v.state not in ENDED_STATES}
    if not missing:
        return answers, ""
    accounted, problem = sacct(sorted({job_id.split("_")[0] for job_id in missing}))
    for job_id in missing:
        if job_id in accounted:
            answers[job_id] = accounted[job_id]
    return answers, problem


def cancel(job_ids):
    """scancel the jobs `job_ids`; returns scancel's complaint, if any (a job that has just
    ended is no error here)."""
    if not job_ids:
        return ""
    out = _run(["scancel", *job_ids])
    return out.stderr.strip() if out.returncode != 0 else ""
