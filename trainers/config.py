"""Configs: YAML files with `_BASE_` inheritance, and `make_cfg`, the one way to build a
trainer's config (train.py, the tools and the tests all use it).

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
    from . import get_trainer_class, prompt_trainer, repository_trainers

    if not trainer:
        raise ValueError(f"a trainer is required (--trainer): one of {', '.join(repository_trainers())}")
    trainer_cls = get_trainer_class(trainer)
    cfg = get_cfg_default()
    datasets.add_config(cfg)
    prompt_trainer.add_config(cfg)
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
