"""A loaded run's model as the tensors and metadata of an exported classifier
(`clipprompt.exported` describes the file), and the command line of `python -m tools.export`.

    python -m tools.export --model-dir RUN --out model.safetensors [--load-epoch N]
        [--classnames FILE | --dataset-config-file FILE --root DATA] [--subsample-classes new]

The classes are chosen as for predict.py (`tools.export.run`). Class features are computed once,
here, in the run's precision (TRAINER.PREC, on --device), and stored in fp32.
"""

import argparse
import os
import re

import torch

from clipprompt.atomic import WriteError, write_error_message
from clipprompt.clip_loading import CheckpointError
from clipprompt.exported import LEARNED, portable_backbone, save_exported
from clipprompt.learnable import CheckpointMismatch, learnable_parameters
from tools.export.run import add_run_arguments, load_run
from trainers.runs.checkpoints import UnreadableCheckpoint


def preprocessing(cfg):
    """Dassl's test transform (`build_transform(cfg, is_train=False)`) as the metadata records it."""
    normalize = {"mean": list(cfg.INPUT.PIXEL_MEAN), "std": list(cfg.INPUT.PIXEL_STD)}
    return {
        "resize": max(cfg.INPUT.SIZE),
        "crop": list(cfg.INPUT.SIZE),
        "interpolation": cfg.INPUT.INTERPOLATION,
        "normalize": normalize if "normalize" in cfg.INPUT.TRANSFORMS else None,
        "instance_norm": "instance_norm" in cfg.INPUT.TRANSFORMS,
    }


def without_folders(text):
    """`text` with every absolute path replaced by its last component: an exported file records
    no folder of the machine it was made on."""
    return re.sub(r"(?<![\w.])/[^\s()]*", lambda m: os.path.basename(m.group(0).rstrip("/")) or "/", text)


def backbone_metadata(trainer):
    """The run's backbone as its checkpoints record it, and an open_clip model's config itself
    ("architecture"), so that the file loads where the config file is not."""
    record = trainer.checkpoint_identity()["backbone"]
    architecture = trainer.backbone_architecture
    return record | ({"architecture": architecture} if architecture is not None else {})


@torch.no_grad()
def exported(trainer, model_dir, classes_from, out):
    """(tensors, metadata) of the exported classifier of a loaded trainer, to be written to `out`:
    what its model says it needs (`PromptedCLIP.export_tensors` / `export_metadata`), its learned
    tensors, router and logit scale, and the metadata every kind shares."""
    cfg, model = trainer.cfg, trainer.model
    if not model.export_kind:
        raise ValueError(f"{cfg.TRAINER.NAME}'s model ({type(model).__name__}) has no exported form")
    with trainer.autocast():
        tensors = dict(model.export_tensors())
    tensors = {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}
    tensors |= {LEARNED + name: p.float() for name, p in learnable_parameters(model).items()}
    router = model.routing_module()
    if router is not None:
        tensors |= {f"router.{name}": p.float() for name, p in router.linear.named_parameters()}
    tensors["logit_scale"] = torch.as_tensor(model.scale(), dtype=torch.float32)
    metadata = {
        "kind": model.export_kind,
        "trainer": cfg.TRAINER.NAME,
        # The CLIP's file by its name and its path relative to `out`: found from any folder.
        "backbone": portable_backbone(backbone_metadata(trainer), out),
        "classnames": list(trainer.classnames),
        "templates": model.templates(),
        "routing": None,
        "preprocessing": preprocessing(cfg),
        "logit_scale": tensors["logit_scale"].item(),
        "logit_bias": None if model.logit_bias is None else model.logit_bias.item(),
        "run": {
            "model_dir": os.path.basename(os.path.normpath(model_dir)),
            "epoch": trainer.finished_epochs,
            "classes": without_folders(classes_from),
        },
        "precision": cfg.TRAINER.PREC,
        **model.export_metadata(),
    }
    if model.routing_names:
        metadata["routing"] = {
            "kind": model.routing_kind,
            "candidates": list(model.routing_names),
            "top_k": model.top_k,
        }
    return tensors, metadata


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--out", required=True, help="the classifier file to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        parser.error(f"--out {args.out}: the file name must end in .safetensors")
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"--out {args.out} exists: choose another file, or pass --overwrite")
    if args.subsample_classes and args.classnames:
        parser.error("--subsample-classes picks classes of a dataset; --classnames lists them")
    return args


def main(argv=None):
    args = parse_args(argv)
    run = (args.model_dir, args.load_epoch, args.classnames, args.dataset_config_file, args.root)
    try:
        trainer, where = load_run(*run, args.subsample_classes, args.device)
    except (CheckpointMismatch, CheckpointError, UnreadableCheckpoint, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    tensors, metadata = exported(trainer, args.model_dir, where, args.out)
    try:
        save_exported(args.out, tensors, metadata)
    except WriteError as err:  # disk full, read-only folder
        raise SystemExit(f"error: {write_error_message(err)}") from None
    size = os.path.getsize(args.out)
    print(
        f"Exported {metadata['trainer']} ({metadata['kind']}, {len(metadata['classnames'])} classes from "
        f"{where}, epoch {trainer.finished_epochs}) to {args.out} ({size / 2**20:.1f} MiB)"
    )
