"""python -m tools.sweep: whole protocols, for several trainer configs, on every GPU of a machine
(--backend local) or on a Slurm cluster (--backend slurm), with one command. The runs are the
protocol scripts' (tools.protocols.plan), into the same output layout, so that the scripts, the
sweep and tools.results can take turns on one output tree. See docs/SWEEPS.md.
"""

import argparse
import os
import sys

from tools.protocols import BENCHMARK, DG_TARGETS, PROTOCOL_NAMES, XD_TARGETS, Grid, plan
from tools.sweep.job import write_tables
from tools.sweep.local import CPU, Pool, visible_gpus, worker_slots
from tools.sweep.progress import Progress, print_plan, status_tables
from tools.sweep.scheduler import SlurmUnreachable
from tools.sweep.slurm import Slurm, SubmissionRefused, ask_or_assume, check_slurm, parse_time
from tools.sweep.state import DONE, QUEUED, RUNNING, Store, classify

DEFAULT_SHOTS = {"base2new": [16], "fewshot": [1, 2, 4, 8, 16], "xd": [16]}


def trainer_spec(text):
    trainer, sep, config = text.partition(":")
    if not (sep and trainer and config and "/" not in text):
        raise argparse.ArgumentTypeError(f"expected Trainer:config (e.g. CoOp:vit_b16_ctxv1), got '{text}'")
    return trainer, config


def non_negative(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return int(text)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def gpu_list(text):
    if text == CPU:
        return [CPU]
    gpus = [g.strip() for g in text.split(",")]
    if not all(gpus):
        raise argparse.ArgumentTypeError(f"expected GPU ids such as 0,1,3 (or 'cpu'), got '{text}'")
    return gpus


def mem_gb(text):
    number = text.upper().removesuffix("B").removesuffix("G")
    try:
        return float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected memory in GB such as 32 or 32G, got '{text}'") from None


def time_limit(text):
    try:
        parse_time(text)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"expected a time in Slurm's format (minutes, H:MM:SS, D-HH:MM:SS, ...), got '{text}'"
        ) from None
    return text


def slurm_opt(text):
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option), got '{text}'")
    return text


def parser():
    p = argparse.ArgumentParser(prog="python -m tools.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--protocol",
        nargs="+",
        choices=PROTOCOL_NAMES,
        required=True,
        help="the protocols to run (the scripts' base2new.sh, fewshot.sh, xd.sh), e.g. base2new",
    )
    p.add_argument(
        "--trainers",
        nargs="+",
        type=trainer_spec,
        required=True,
        metavar="TRAINER:CONFIG",
        help="trainers with the config to run them with, e.g. MoCoOp:paper_vit_b16_ep25 CoOp:vit_b16_ctxv1",
    )
    p.add_argument(
        "--datasets", nargs="+", help="base2new and fewshot datasets (default: the 11 of the tables)"
    )
    p.add_argument(
        "--targets", nargs="+", help="xd targets (default: the 10 other datasets and the 4 ImageNet variants)"
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=non_negative,
        default=[1, 2, 3],
        metavar="SEED",
        help="seeds (default: 1 2 3)",
    )
    p.add_argument(
        "--shots", nargs="+", type=positive, help="shots per class (default: 16; fewshot: 1 2 4 8 16)"
    )
    p.add_argument(
        "--data",
        default=os.environ.get("DATA"),
        help="the datasets' root, train.py's --root (default: $DATA)",
    )
    p.add_argument("--output", default="output", help="the output root (default: output)")
    p.add_argument(
        "--python", default=sys.executable, help="the interpreter that runs train.py (default: this one)"
    )
    p.add_argument(
        "--backend",
        choices=("local", "slurm"),
        default="local",
        help="local: worker processes on this machine (default); slurm: a job array on a Slurm cluster",
    )
    p.add_argument("--retries", type=non_negative, default=1, help="attempts after a failure (default: 1)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan: runs, dependencies, what is done; run nothing"
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print a table per protocol of what is done, running, failed, blocked and pending",
    )
    p.add_argument(
        "--no-report", action="store_true", help="do not run tools.results and tools.plots at the end"
    )
    local = p.add_argument_group("local backend")
    local.add_argument(
        "--gpus",
        type=gpu_list,
        help="GPU ids, e.g. 0,1,3, or 'cpu' (default: every visible GPU; none: CPU jobs)",
    )
    local.add_argument(
        "--jobs-per-gpu",
        type=positive,
        default=1,
        help="jobs at once per GPU, or CPU jobs at once without GPU (default: 1)",
    )
    slurm = p.add_argument_group("slurm backend")
    slurm.add_argument("--partition", help="the Slurm partition (default: the cluster's)")
    slurm.add_argument(
        "--time",
        type=time_limit,
        default="4:00:00",
        help="time limit per run, in Slurm's format (default: 4:00:00)",
    )
    slurm.add_argument("--gpus-per-job", type=non_negative, default=1, help="GPUs per run (default: 1)")
    slurm.add_argument("--cpus-per-job", type=positive, default=8, help="CPU cores per run (default: 8)")
    slurm.add_argument("--mem", type=mem_gb, help="memory per job in GB (default: the partition's)")
    slurm.add_argument(
        "--array-parallelism", type=positive, default=256, help="array tasks running at once (default: 256)"
    )
    slurm.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line run before each job, e.g. 'source .venv/bin/activate' (repeatable)",
    )
    slurm.add_argument(
        "--slurm-opt",
        action="append",
        type=slurm_opt,
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. account=abc or qos=high (repeatable)",
    )
    slurm.add_argument(
        "--wait",
        action="store_true",
        help="wait for the jobs and write the tables here (default: submit, and a job writes the tables)",
    )
    slurm.add_argument(
        "--poll",
        type=positive,
        default=30,
        metavar="SECONDS",
        help="how often --wait asks Slurm about the jobs (default: 30)",
    )
    slurm.add_argument(
        "--executor",
        choices=("slurm", "local"),
        default="slurm",
        help="submitit's executor: local runs the same jobs as local processes, without a cluster",
    )
    return p


def build_runs(args):
    runs = []
    for protocol in args.protocol:
        if protocol == "xd":
            datasets = args.targets or XD_TARGETS + DG_TARGETS
        else:
            datasets = args.datasets or BENCHMARK
        for trainer, config in args.trainers:
            grid = Grid(trainer, config, args.data or "$DATA", args.output)
            runs += plan(protocol, grid, datasets, args.seeds, args.shots or DEFAULT_SHOTS[protocol])
    return runs


def check_setup(p, args):
    if not (os.path.isfile("train.py") and os.path.isdir("configs")):
        p.error(f"run the sweep from the repository root (no train.py and configs/ in {os.getcwd()})")
    if args.status:
        return
    if not args.data:
        p.error("--data is not given and DATA is not set: the folder holding the datasets in CoOp's layout")
    if not args.dry_run and not os.path.isdir(args.data):
        p.error(f"--data {args.data} is not a directory")


def report_command(args):
    """tools.results on the output tree (its tables, as CSV in <output>/tables), then tools.plots."""
    seeds = ["--seeds", *map(str, args.seeds)]
    results = [sys.executable, "-m", "tools.results", args.output, *seeds]
    if args.datasets:
        results += ["--datasets", *args.datasets]
    plots = [sys.executable, "-m", "tools.plots", args.output, "--out", f"{args.output}/plots", *seeds]
    return results, plots


def run_local(args, runs, store):
    verdicts = ask_or_assume(store, runs)
    in_slurm = {path for path, v in verdicts.items() if v.state in (RUNNING, QUEUED)}
    if in_slurm:
        runs = [r for r in runs if r.path not in in_slurm and r.after not in in_slurm]
        print(
            f"{len(in_slurm)} runs are queued or running in Slurm (see --status): this sweep leaves "
            "them and their evaluations to it",
            file=sys.stderr,
        )
    gpus = args.gpus if args.gpus is not None else visible_gpus()
    slots = worker_slots(gpus, args.jobs_per_gpu)
    where = "CPU" if slots[0] in (None, CPU) else "GPU " + ",".join(dict.fromkeys(slots))
    print(f"{len(runs)} runs, {len(slots)} at once ({where}); state in {store.root}", file=sys.stderr)
    return Pool(runs, store, args.python, slots, args.retries, Progress(len(runs))).run(), True


def run_slurm(args, runs, store):
    """Submit, and with --wait (or --executor local) wait; returns ({path: state}, whether this
    invocation is to write the tables), or None when it only submitted."""
    slurm = Slurm(store, args)
    progress = Progress(len(runs), queued=True)
    jobs = slurm.run(runs, progress)
    if args.executor == "slurm" and not args.wait:
        if jobs and not args.no_report:
            slurm.report_job(runs, jobs, report_command(args))
        return None
    classified = slurm.wait(runs, progress, jobs)
    progress.close()
    # A tables job of an earlier invocation would write the same tables at the same time.
    writer = None if args.no_report or args.executor == "local" else slurm.previous_tables_job()
    if writer:
        print(f"tables: job {writer}, running now, writes {store.output}/tables", file=sys.stderr)
    return classified.state, writer is None


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    check_setup(p, args)
    try:
        runs = build_runs(args)
    except FileNotFoundError as err:
        p.exit(1, f"error: {err}\n")
    store = Store(args.output)
    if args.status or args.dry_run:
        classified = classify(runs, store, ask_or_assume(store, runs))
        (status_tables if args.status else lambda r, c: print_plan(r, c, store, args.python))(
            runs, classified
        )
        return 0
    if args.backend == "slurm" and check_slurm(args):
        p.exit(1, f"error: {check_slurm(args)}\n")
    try:
        outcome = (run_slurm if args.backend == "slurm" else run_local)(args, runs, store)
    except SubmissionRefused as err:
        p.exit(1, f"error: {err}\n")
    except SlurmUnreachable as err:
        p.exit(
            1, f"error: cannot ask Slurm which runs of this sweep are queued or running ({err}); try again\n"
        )
    except KeyboardInterrupt:
        if args.backend == "slurm" and args.executor == "slurm":
            print("\nstopped waiting; the jobs go on in Slurm (--status to follow them)", file=sys.stderr)
        else:
            print(
                "\ninterrupted: re-run the same command to continue (finished runs are kept)", file=sys.stderr
            )
        return 130
    if outcome is None:
        return 0
    state, tables_here = outcome
    undone = [path for path, s in state.items() if s != DONE]
    print(
        f"{len(runs) - len(undone)}/{len(runs)} runs done" + (f", {len(undone)} not" if undone else ""),
        file=sys.stderr,
    )
    live = [path for path, s in state.items() if s in (RUNNING, QUEUED)]
    if live and not args.no_report:
        print(f"no tables: {len(live)} runs are still queued or running in Slurm", file=sys.stderr)
    report = 0 if args.no_report or live or not tables_here else write_tables(*report_command(args))
    return 1 if undone or report else 0
