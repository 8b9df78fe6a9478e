"""Configs: YAML files with `_BASE_` inheritance, the keys every trainer shares
(`add_config`), and `make_cfg`, the one way to build a trainer's config (train.py, the tools
and the tests all use it).

Precedence: Dassl defaults < keys declared by the datasets package, the shared trainer base and
the chosen trainer < dataset config < trainer config < `root`, `output_dir`, `resume`, `seed`,
`backbone` (train.py's flags) < `opts` (KEY VALUE pairs).
"""

import os

import yaml
from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY
from yacs.config import CfgNode as CN

import datasets


def read_config_file(path, seen=()):
    """Key tree (nested dicts) of a YAML config with its `_BASE_` chain merged in, base first.

    `_BASE_: other.yaml` is resolved relative to the including file; a list of files is
    merged in order, later files overriding earlier ones, and the including file last.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path} not found")
    if os.path.abspath(path) in seen:
        raise ValueError(f"Config file {path} includes itself through _BASE_")
    with open(path) as f:
        tree = yaml.safe_load(f) or {}
    bases = tree.pop("_BASE_", [])
    merged = {}
    for base in [bases] if isinstance(bases, str) else bases:
        parent = read_config_file(os.path.join(os.path.dirname(path), base), (*seen, os.path.abspath(path)))
        deep_update(merged, parent)
    return deep_update(merged, tree)


def deep_update(base, override):
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def add_config(cfg):
    """Keys shared by every trainer of this repository (each trainer declares its own in its
    module's `add_config`)."""
    # MODEL.BACKBONE.NAME (Dassl's key) is an OpenAI CLIP name ("ViT-B/16"), an OpenAI CLIP
    # checkpoint file, or "open_clip:<model>" (docs/BACKBONES.md).
    # Directory for downloaded weights ("" = ~/.cache/clip for OpenAI's, ~/.cache/open_clip for
    # open_clip's, one folder per Hugging Face repository there).
    cfg.MODEL.BACKBONE.DOWNLOAD_ROOT = ""
    # open_clip only: the weights, an open_clip pretrained tag of the model ("laion2b_s34b_b88k"),
    # "hf-hub:<org>/<repo>" (or "hf-hub:<org>/<repo>/<file>") or a checkpoint file.
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    # open_clip only: a JSON model config in open_clip's format for models open_clip does not list
    # ("" = open_clip's config of the model named in NAME).
    cfg.MODEL.BACKBONE.MODEL_CONFIG = ""
    # fp32: everything in fp32; fp16: frozen CLIP weights in fp16 (CoOp's default), learnable
    # tensors and losses in fp32; amp: fp32 weights under torch.autocast.
    cfg.TRAINER.PREC = "fp16"
    # Autocast dtype for PREC amp: auto (bf16 where the device supports it, else fp16 with
    # gradient scaling), bfloat16 or float16.
    cfg.TRAINER.AMP_DTYPE = "auto"
    # Clip the gradient norm of the learnable tensors to this value (0 = no clipping).
    cfg.TRAINER.GRAD_CLIP_NORM = 0.0
    cfg.TRAINER.TEXT_ENCODER = CN()
    # Cut prompt sequences after the longest EOT (exact); False runs all 77 positions.
    cfg.TRAINER.TEXT_ENCODER.TRUNCATE = True
    # fused: scaled_dot_product_attention(is_causal=True); math: explicit softmax reference.
    cfg.TRAINER.TEXT_ENCODER.ATTENTION = "fused"
    # Encode at most this many prompts per transformer call (0 = all at once).
    cfg.TRAINER.TEXT_ENCODER.CHUNK_SIZE = 0
    # Recompute text-transformer activations in backward to save memory.
    cfg.TRAINER.TEXT_ENCODER.CHECKPOINT = False
    # Run the positions that all prompts of a form share (SOS and the context before the class
    # name; per image for CoCoOp) once per form instead of once per class (exact); False runs
    # every prompt in full (reference path).
    cfg.TRAINER.TEXT_ENCODER.SHARE_PREFIX = True
    # Save a resumable checkpoint after every epoch (Dassl's default 0 saves only the last,
    # which makes an interrupted run start over).
    cfg.TRAIN.CHECKPOINT_FREQ = 1
    # Deterministic runs (trainers.runs.determinism): cuDNN deterministic without benchmarking,
    # torch's deterministic algorithms where it has them, one CPU thread. False is faster and
    # may differ between runs in the last bits. Not run-defining: each start records its value.
    cfg.DETERMINISTIC = False
    # Cross-dataset evaluation: the dataset config of the training data. Trainers whose model
    # is shaped by the dataset's prompts (MoCoOp's experts, MoPD's teacher pool) build it from
    # that file's DATASET.PROMPTS, so that it fits the checkpoint ("" = this dataset's).
    cfg.DATASET.SOURCE_CONFIG = ""
    cfg.DATASET.PROMPTS = prompt_defaults()


def model_prompts(cfg):
    """The DATASET.PROMPTS that shape the model: the training dataset's in cross-dataset
    evaluation (DATASET.SOURCE_CONFIG), else this dataset's."""
    path = cfg.DATASET.SOURCE_CONFIG
    if not path:
        return cfg.DATASET.PROMPTS
    source = read_config_file(path).get("DATASET", {}).get("PROMPTS")
    if not source:
        raise ValueError(f"DATASET.SOURCE_CONFIG {path} has no DATASET.PROMPTS")
    prompts = prompt_defaults()
    prompts.merge_from_other_cfg(CN(source))
    return prompts


def prompt_defaults():
    """DATASET.PROMPTS: the dataset's hand-crafted prompts, set by configs/datasets/<dataset>.yaml."""
    prompts = CN()
    # CoOp's per-dataset template (ZeroshotCLIP; KgCoOp unless KNOWLEDGE_TEMPLATE is set).
    prompts.TEMPLATE = "a photo of a {}."
    # KgCoOp's hard prompt where it differs from TEMPLATE ("" = TEMPLATE).
    prompts.KNOWLEDGE_TEMPLATE = ""
    # MoCoOp experts: group sizes and the flat template list (expert g starts from the first
    # template of its group).
    prompts.EXPERT_GROUPS = ()
    prompts.EXPERT_TEMPLATES = ()
    # MoPD's `task` teacher pool.
    prompts.TEACHER_TEMPLATES = ()
    return prompts


def make_cfg(
    trainer,
    dataset_config=None,
    config_file=None,
    opts=(),
    *,
    root="",
    output_dir="",
    resume="",
    seed=None,
    backbone="",
):
    """The frozen, validated config of `trainer` (a registered name, e.g. "CoOp").

    `dataset_config` / `config_file`: configs/datasets/<name>.yaml and
    configs/trainers/<Trainer>/<config>.yaml (or any YAML file); `opts`: KEY VALUE pairs, as
    strings (decoded as yacs does) or Python values. The keyword arguments are train.py's flags:
    DATASET.ROOT, OUTPUT_DIR, RESUME, SEED (None or < 0 keeps the config's) and
    MODEL.BACKBONE.NAME, set when given. The trainer's `check_cfg` validates the result, so a bad
    value fails here, before any output is written.
    """
    from . import get_trainer_class, repository_trainers

    if not trainer:
        raise ValueError(f"a trainer is required (--trainer): one of {', '.join(repository_trainers())}")
    trainer_cls = get_trainer_class(trainer)
    cfg = get_cfg_default()
    datasets.add_config(cfg)
    add_config(cfg)
    trainer_cls.add_config(cfg)
    cfg.TRAINER.NAME = trainer

    for path in (dataset_config, config_file):
        if path:
            _merge(cfg, path, lambda path=path: cfg.merge_from_other_cfg(CN(read_config_file(path))))
    flags = {
        "DATASET.ROOT": root,
        "OUTPUT_DIR": output_dir,
        "RESUME": resume,
        "MODEL.BACKBONE.NAME": backbone,
    }
    for key, value in flags.items():
        if value:
            _set(cfg, key, str(value))
    if seed is not None and seed >= 0:
        cfg.SEED = int(seed)
    if opts:
        _merge(cfg, "command-line options", lambda: cfg.merge_from_list(list(opts)))
    cfg.TRAINER.NAME = trainer

    if cfg.DATASET.NAME not in DATASET_REGISTRY.registered_names():
        raise ValueError(
            f"Unknown dataset {cfg.DATASET.NAME!r} (DATASET.NAME): choose one of "
            f"{', '.join(sorted(DATASET_REGISTRY.registered_names()))} via --dataset-config-file"
        )
    trainer_cls.check_cfg(cfg)
    cfg.freeze()
    return cfg


def _set(cfg, key, value):
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value


def _merge(cfg, source, merge_fn):
    """Apply `merge_fn`, turning yacs' bare KeyError into an error that names the source."""
    try:
        merge_fn()
    except (KeyError, AssertionError) as err:  # yacs reports unknown keys with both
        raise ValueError(
            f"{source}: {err.args[0]}. Config keys are declared by Dassl, the datasets package, "
            f"the shared trainer base and the trainer ({cfg.TRAINER.NAME}); check the spelling, or "
            "whether this file or option belongs to another trainer."
        ) from None
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
