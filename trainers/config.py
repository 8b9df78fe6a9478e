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
    tree = _load_mapping(path)
    bases = tree.pop("_BASE_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"Config file {path} has _BASE_: {bases!r}, not a file name or a list of file names")
    merged = {}
    for base in bases:
        parent = read_config_file(os.path.join(os.path.dirname(path), base), (*seen, os.path.abspath(path)))
        deep_update(merged, parent)
    return deep_update(merged, tree)


def _load_mapping(path):
    """The key tree of one YAML file; anything but a non-empty mapping is an error naming the
    file (an empty file would otherwise run Dassl's defaults: Adam, lr 3e-4, 10 epochs)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            tree = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"Config file {path} is not valid YAML ({err})") from None
    example = "nested KEY: value lines, as in configs/trainers/CoOp/vit_b16_ep50.yaml"
    if tree is None:
        raise ValueError(
            f"Config file {path} is empty: a config file is a mapping of keys ({example}); "
            "an empty file would run Dassl's defaults"
        )
    if not isinstance(tree, dict):
        # A ValueError, as for every bad config input (callers report those).
        message = f"Config file {path} holds a {type(tree).__name__}, not a mapping of keys ({example})"
        raise ValueError(message)  # noqa: TRY004
    return tree


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
    # ProGrad's own template of the dataset (its zero-shot teacher and initial context) where
    # it differs from TEMPLATE ("" = TEMPLATE).
    prompts.PROGRAD_TEMPLATE = ""
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
            tree = CN(read_config_file(path))  # its errors name the file already
            _merge(cfg, path, lambda tree=tree: cfg.merge_from_other_cfg(tree))
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
    check_training_values(cfg)
    trainer_cls.check_cfg(cfg)
    cfg.freeze()
    return cfg


def check_training_values(cfg):
    """Optimiser, schedule and loader values that Dassl would accept and then train nothing with
    (MAX_EPOCH 0 logs the untrained prompt's accuracy as the run's result), silently clamp
    (a negative warm-up) or fail on only later: one error naming the key, before anything runs."""
    from dassl.optim.optimizer import AVAI_OPTIMS

    from .runs.schedule import POLICIES

    opt, loader = cfg.OPTIM, cfg.DATALOADER
    problems = [
        (opt.MAX_EPOCH < 1, f"OPTIM.MAX_EPOCH must be at least 1 (training epochs), not {opt.MAX_EPOCH}"),
        (opt.LR <= 0, f"OPTIM.LR must be positive, not {opt.LR}"),
        (
            opt.NAME not in AVAI_OPTIMS,
            f"OPTIM.NAME {opt.NAME!r} is not an optimiser Dassl builds: use one of {', '.join(AVAI_OPTIMS)}",
        ),
        (
            opt.LR_SCHEDULER not in POLICIES,
            f"OPTIM.LR_SCHEDULER {opt.LR_SCHEDULER!r} is not supported: use one of {', '.join(POLICIES)}",
        ),
        (
            opt.WARMUP_EPOCH < -1,  # -1 is Dassl's default, also no warm-up
            f"OPTIM.WARMUP_EPOCH must be 0 or more (0 and Dassl's default -1: no warm-up), not {opt.WARMUP_EPOCH}",
        ),
        (opt.WEIGHT_DECAY < 0, f"OPTIM.WEIGHT_DECAY must be 0 or more, not {opt.WEIGHT_DECAY}"),
        (opt.MOMENTUM < 0, f"OPTIM.MOMENTUM must be 0 or more, not {opt.MOMENTUM}"),
        (
            opt.LR_SCHEDULER != "cosine" and opt.GAMMA <= 0,
            f"OPTIM.GAMMA must be positive for {opt.LR_SCHEDULER}, not {opt.GAMMA}",
        ),
        (
            cfg.TRAINER.GRAD_CLIP_NORM < 0,
            f"TRAINER.GRAD_CLIP_NORM must be 0 (no clipping) or more, not {cfg.TRAINER.GRAD_CLIP_NORM}",
        ),
        (loader.NUM_WORKERS < 0, f"DATALOADER.NUM_WORKERS must be 0 or more, not {loader.NUM_WORKERS}"),
    ]
    for split in ("TRAIN_X", "TEST"):
        size = loader[split].BATCH_SIZE
        problems.append((size < 1, f"DATALOADER.{split}.BATCH_SIZE must be at least 1, not {size}"))
    if opt.WARMUP_EPOCH > 0:
        kinds = ("constant", "linear")
        problems.append(
            (
                opt.WARMUP_TYPE not in kinds,
                f"OPTIM.WARMUP_TYPE must be constant or linear, not {opt.WARMUP_TYPE!r}",
            )
        )
        key = "WARMUP_CONS_LR" if opt.WARMUP_TYPE == "constant" else "WARMUP_MIN_LR"
        problems.append(
            (opt[key] <= 0, f"OPTIM.{key} must be positive for a {opt.WARMUP_TYPE} warm-up, not {opt[key]}")
        )
    for bad, message in problems:
        if bad:
            raise ValueError(message)


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
