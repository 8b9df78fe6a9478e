"""Train or evaluate a prompt learner: CoOp's command line, on today's stack.

    python train.py --root DATA --seed 1 --trainer CoOp \
        --dataset-config-file configs/datasets/oxford_pets.yaml \
        --config-file configs/trainers/CoOp/vit_b16_ep50.yaml \
        --output-dir output/... [KEY VALUE ...]

Config precedence: Dassl defaults < keys declared by the datasets package, the shared trainer
base and the chosen trainer < dataset config < trainer config < command-line flags < trailing
KEY VALUE pairs. A config file may start with `_BASE_: other.yaml` (resolved next to it) to
inherit another file.
"""

import warnings

# Two warnings printed by every run that no user can act on: openai-clip and wilds (a Dassl
# dependency) import pkg_resources, and wilds' `outdated` asks PyPI for a newer version in a
# background thread (after any import-time filter would have been undone). Only these two.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message="Failed to check for latest version of package")

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time

import dassl
import torch
from dassl.utils import collect_env_info, set_random_seed

import trainers
from clipprompt.atomic import WriteError, naming_write_errors, write_error_message, write_text_atomically
from clipprompt.clip_loading import CheckpointError
from trainers.runs.determinism import set_determinism
from trainers.runs.folder import RunLog, config_changes, describe_changes, held_results, run_seed, start_log
from trainers.runs.lock import RunFolderBusy, lock_run_folder

REPO = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=str, default="", help="path to dataset root (DATASET.ROOT)")
    parser.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    parser.add_argument("--seed", type=int, default=-1, help="random seed; >= 0 fixes it (0 included)")
    parser.add_argument("--trainer", type=str, default="", help="trainer name, e.g. CoOp or MoCoOp")
    parser.add_argument(
        "--backbone",
        type=str,
        default="",
        help="MODEL.BACKBONE.NAME: an OpenAI CLIP name, a checkpoint path, or open_clip:<model>",
    )
    parser.add_argument("--dataset-config-file", type=str, default="", help="configs/datasets/<name>.yaml")
    parser.add_argument(
        "--config-file", type=str, default="", help="configs/trainers/<Trainer>/<config>.yaml"
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate only")
    parser.add_argument("--model-dir", type=str, default="", help="load the model from this directory (eval)")
    parser.add_argument("--load-epoch", type=int, help="epoch to load (default: the finished run's last)")
    parser.add_argument("--no-train", action="store_true", help="build everything but do not train")
    parser.add_argument("opts", nargs="*", help="KEY VALUE pairs overriding the config")
    # Intermixed: flags may follow the KEY VALUE pairs too.
    return parser.parse_intermixed_args(argv)


def setup_cfg(args):
    """The config of parsed command-line arguments (`trainers.make_cfg` with train.py's flags)."""
    return trainers.make_cfg(
        args.trainer,
        args.dataset_config_file,
        args.config_file,
        args.opts,
        root=args.root,
        output_dir=args.output_dir,
        resume=args.resume,
        seed=args.seed,
        backbone=args.backbone,
    )


def git_revision():
    def git(*cmd):
        out = subprocess.run(["git", "-C", REPO, *cmd], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))


def check_output_dir(cfg):
    """Refuse an output folder that holds another run; returns (notes to log, whether this
    start replaces the folder's config.yaml).

    Only run-defining keys are compared (`trainers.runs.folder.NOT_RUN_DEFINING` lists the
    others: paths, workers, logging, memory knobs), so a moved data or output tree resumes.
    A folder without checkpoints and results (a start that failed) may start another config.
    """
    config_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not os.path.exists(config_path):
        return [], False
    with open(config_path, encoding="utf-8") as f:
        changed, one_sided = config_changes(f.read(), cfg)
    notes = []
    if one_sided:
        notes.append(
            f"Note: not compared with {config_path} (declared on one side only): {', '.join(one_sided)}"
        )
    if changed:
        held = held_results(cfg.OUTPUT_DIR)
        if held:
            raise RuntimeError(
                f"{cfg.OUTPUT_DIR} holds a run with a different configuration ({config_path}): "
                f"{describe_changes(changed)}; it has {', '.join(held[:4])}. Use another --output-dir "
                "(results of different configs must not share a directory), or the same config to "
                "resume or re-evaluate that run."
            )
        notes.append(
            f"Note: {config_path} is from a start that left no checkpoint and no result; this start "
            f"replaces it ({describe_changes(changed)})"
        )
    return notes, bool(changed)


def with_run_seed(cfg):
    """(cfg, note): without a seed (SEED < 0), the config with the seed drawn at the run's first
    start (`trainers.runs.folder.run_seed`), so that its starts share one few-shot sample."""
    config_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    saved = None
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            saved = f.read()
    seed, note = run_seed(cfg.OUTPUT_DIR, cfg.SEED, saved)
    if seed != cfg.SEED:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SEED = seed
        cfg.freeze()
    return cfg, note


def record_invocation(cfg, argv, determinism):
    """Append one line to `invocations.jsonl` per start: resumes and re-evaluations stay on
    record with their command line, paths, commit, environment and determinism settings."""
    commit, dirty = git_revision()
    record = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": [sys.executable, *argv],
        "seed": cfg.SEED,
        "cwd": os.getcwd(),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dassl": getattr(dassl, "__version__", None),
        **determinism,
    }
    path = os.path.join(cfg.OUTPUT_DIR, "invocations.jsonl")
    with naming_write_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def record_run(cfg, trainer, replace):
    """Once the data and the model are built: the resolved `config.yaml` (kept from the first
    start unless `replace`) and the training data actually used (`data_summary.json`)."""
    config_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if replace or not os.path.exists(config_path):
        write_text_atomically(config_path, cfg.dump())
    summary = getattr(getattr(trainer.dm, "dataset", None), "summary", None)
    if summary is not None:
        path = os.path.join(cfg.OUTPUT_DIR, "data_summary.json")
        write_text_atomically(path, json.dumps(summary(), indent=1) + "\n")


def main(argv=None):
    argv = sys.argv if argv is None else argv
    args = parse_args(argv[1:])
    cfg = setup_cfg(args)
    try:
        # Before anything else is read or written in the folder: one train.py per run folder.
        lock = lock_run_folder(cfg.OUTPUT_DIR)
        try:
            run(cfg, args, argv, [lock.note] if lock.note else [])
        finally:
            lock.release()
    except RunFolderBusy as err:
        raise SystemExit(f"error: {err}") from None
    except CheckpointError as err:  # the CLIP cannot be loaded (not downloaded, not a CLIP, ...)
        print(f"error: {err}")  # in the run's log too
        if isinstance(sys.stdout, RunLog):
            sys.stdout.close()
        raise SystemExit(f"error: {err}") from None
    except WriteError as err:  # disk full, read-only output: one line, not a traceback
        if isinstance(sys.stdout, RunLog):
            sys.stdout.close()
        again = "Then run the same command again (a run resumes from its last checkpoint)"
        raise SystemExit(f"error: {write_error_message(err, again)}") from None


def run(cfg, args, argv, notes):
    """train.py's work in its locked output folder; `notes` are printed once the log is open."""
    cfg, seed_note = with_run_seed(cfg)
    folder_notes, replace_config = check_output_dir(cfg)
    start_log(cfg.OUTPUT_DIR)
    for note in [*notes, seed_note, *folder_notes]:
        if note:
            print(note)
    determinism = set_determinism(cfg.DETERMINISTIC, torch.cuda.is_available() and cfg.USE_CUDA)
    record_invocation(cfg, argv, determinism)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    print(f"Determinism: {determinism}")

    print("Command: " + " ".join(argv))
    print("** Config **")
    print(cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")

    print(f"Loading trainer: {cfg.TRAINER.NAME}")
    trainer = trainers.build_trainer(cfg)
    record_run(cfg, trainer, replace_config)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    if not args.no_train:
        trainer.train()


if __name__ == "__main__":
    main()
