"""A loaded run's model as the tensors and metadata of an exported classifier
(`clipprompt.exported` describes the file), and the command line of `python -m tools.export`.

    python -m tools.export --model-dir RUN --out model.safetensors [--load-epoch N]
        [--classnames FILE | --dataset-config-file FILE --root DATA] [--subsample-classes new]

The classes are chosen as for predict.py (`tools.export.run`). Class features are computed once,
here, in the run's precision (TRAINER.PREC, on --device), and stored in fp32.
"""

import argparse
import os

import torch

from clipprompt.atomic import WriteError, write_error_message
from clipprompt.caching import CachedTextFeatures
from clipprompt.clip_loading import CheckpointError
from clipprompt.conditional import ConditionalCLIP
from clipprompt.exported import LEARNED, save_exported
from clipprompt.learnable import CheckpointMismatch, learnable_parameters
from tools.export.run import add_run_arguments, load_run
from trainers.runs.checkpoints import UnreadableCheckpoint


def templates(trainer):
    """The hand-crafted templates behind the classifier: the routed candidates (MoCoOp's expert
    initialisations, MoPD's teachers), ZeroshotCLIP's ensemble, KgCoOp's hard prompt; none for
    the prompts CoOp and CoCoOp learn."""
    if trainer.model.routing_names:
        return list(trainer.model.routing_names)
    name, prompts = trainer.cfg.TRAINER.NAME, trainer.cfg.DATASET.PROMPTS
    if name == "ZeroshotCLIP":
        from trainers.zeroshot_clip import ENSEMBLES

        return ENSEMBLES[trainer.cfg.TRAINER.ZEROSHOT.TEMPLATES](trainer.dataset_template())
    if name == "KgCoOp":
        from trainers.kgcoop import knowledge_template

        return [knowledge_template(prompts)]
    return []


def class_features(model):
    """(kind, {name: tensor}) of what classification needs besides the learned tensors."""
    from trainers.mocoop import MixtureCLIP
    from trainers.zeroshot_clip import ZeroshotModel

    if isinstance(model, ConditionalCLIP):
        assembler = model.prompt_learner.assembler
        return "conditional", {"prompt.token_ids": assembler.token_ids, "prompt.slot_ids": assembler.slot_ids}
    if isinstance(model, MixtureCLIP):
        return "experts", {"expert_features": model.compute_text_features()}
    if isinstance(model, CachedTextFeatures):
        return "text_features", {"text_features": model.compute_text_features()}
    if isinstance(model, ZeroshotModel):
        return "text_features", {"text_features": model.text_features}
    raise TypeError(f"cannot export a model of type {type(model).__name__}: add it to tools/export/write.py")


def router_tensors(model):
    """`router.weight` (and `router.bias`) of the router or gate of a model that routes."""
    if not model.routing_names:
        return {}
    router = model.router if hasattr(model, "router") else model.gate
    return {f"router.{name}": value for name, value in router.linear.named_parameters()}


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


@torch.no_grad()
def exported(trainer, model_dir, classes_from):
    """(tensors, metadata) of the exported classifier of a loaded trainer."""
    cfg, model = trainer.cfg, trainer.model
    with trainer.autocast():
        kind, tensors = class_features(model)
    tensors = {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}
    tensors |= {LEARNED + name: p.float() for name, p in learnable_parameters(model).items()}
    tensors |= {name: p.float() for name, p in router_tensors(model).items()}
    scale = model.scale() if kind == "experts" else model.logit_scale.exp()
    tensors["logit_scale"] = torch.as_tensor(scale, dtype=torch.float32)
    encoder = cfg.TRAINER.TEXT_ENCODER
    metadata = {
        "kind": kind,
        "trainer": cfg.TRAINER.NAME,
        "backbone": {"name": cfg.MODEL.BACKBONE.NAME, "fingerprint": trainer.backbone_fingerprint},
        "classnames": list(trainer.classnames),
        "templates": templates(trainer),
        "routing": None,
        "preprocessing": preprocessing(cfg),
        "logit_scale": tensors["logit_scale"].item(),
        "run": {
            "model_dir": os.path.abspath(model_dir),
            "epoch": trainer.finished_epochs,
            "classes": classes_from,
        },
        "precision": cfg.TRAINER.PREC,
    }
    if model.routing_names:
        kind_name = trainer.routing_stats_stem.removesuffix("_stats")
        metadata["routing"] = {
            "kind": kind_name,
            "candidates": list(model.routing_names),
            "top_k": model.top_k,
        }
    if kind == "conditional":
        opts = cfg.TRAINER.COCOOP
        metadata["prompt"] = {"n_ctx": opts.N_CTX, "meta_net_reduction": opts.META_NET_REDUCTION}
        metadata["text_encoder"] = {
            "attention": encoder.ATTENTION,
            "chunk_size": encoder.CHUNK_SIZE,
            "truncate": encoder.TRUNCATE,
            "share_prefix": encoder.SHARE_PREFIX,
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
    tensors, metadata = exported(trainer, args.model_dir, where)
    try:
        save_exported(args.out, tensors, metadata)
    except WriteError as err:  # disk full, read-only folder
        raise SystemExit(f"error: {write_error_message(err)}") from None
    size = os.path.getsize(args.out)
    print(
        f"Exported {metadata['trainer']} ({metadata['kind']}, {len(metadata['classnames'])} classes from "
        f"{where}, epoch {trainer.finished_epochs}) to {args.out} ({size / 2**20:.1f} MiB)"
    )
