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

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Dassl's dependencies import pkg_resources
    import dassl
    from dassl.utils import collect_env_info, set_random_seed, setup_logger

import trainers

REPO = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=str, default="", help="path to dataset root (DATASET.ROOT)")
    parser.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from")
    parser.add_argument("--seed", type=int, default=-1, help="random seed; >= 0 fixes it (0 included)")
    parser.add_argument("--trainer", type=str, default="", help="trainer name, e.g. CoOp or MoCoOp")
    parser.add_argument("--backbone", type=str, default="", help="CLIP model name or checkpoint path")
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


def record_provenance(cfg, argv):
    """Keep the resolved config, the command line, the git commit and the environment.

    `config.yaml` is written once; re-running into the same directory with another config
    is refused (results of two configs must not mix). Every invocation appends one line to
    `invocations.jsonl`, so resumed and re-run evaluations stay on record.
    """
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    config_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    resolved = cfg.dump()
    if os.path.exists(config_path):
        with open(config_path) as f:
            if f.read() != resolved:
                raise RuntimeError(
                    f"{cfg.OUTPUT_DIR} holds a run with a different configuration ({config_path}). "
                    "Use another --output-dir; results of different configs must not share a directory."
                )
    else:
        with open(config_path, "w") as f:
            f.write(resolved)
    commit, dirty = git_revision()
    record = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": [sys.executable, *argv],
        "cwd": os.getcwd(),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dassl": getattr(dassl, "__version__", None),
    }
    with open(os.path.join(cfg.OUTPUT_DIR, "invocations.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None):
    argv = sys.argv if argv is None else argv
    args = parse_args(argv[1:])
    cfg = setup_cfg(args)
    record_provenance(cfg, argv)
    setup_logger(cfg.OUTPUT_DIR)
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True

    print("Command: " + " ".join(argv))
    print("** Config **")
    print(cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")

    print(f"Loading trainer: {cfg.TRAINER.NAME}")
    trainer = trainers.build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    if not args.no_train:
        trainer.train()


if __name__ == "__main__":
    main()
