"""Dassl trainers of this repository; importing the package registers every one of them.

Each trainer module registers its class in Dassl's TRAINER_REGISTRY and gives the class an
`add_config(cfg)` that declares its own config keys, so adding a trainer edits no list.

Public API: `make_cfg` (a trainer's validated config) and `build_trainer` (a trainer from a
config, with Dassl's data loaders, or for given class names without them).
"""

import importlib
import pkgutil

from dassl.engine import TRAINER_REGISTRY

from .config import make_cfg, read_config_file

__all__ = ["build_trainer", "get_trainer_class", "make_cfg", "read_config_file", "repository_trainers"]


def repository_trainers():
    """Names of the trainers defined in this package (Dassl registers its own ones too)."""
    names = TRAINER_REGISTRY.registered_names()
    return sorted(n for n in names if TRAINER_REGISTRY.get(n).__module__.startswith(__name__ + "."))


def get_trainer_class(name):
    if name not in repository_trainers():
        raise ValueError(f"Unknown trainer {name!r}: choose one of {', '.join(repository_trainers())}")
    return TRAINER_REGISTRY.get(name)


def build_trainer(cfg, classnames=None, all_classnames=None, clip_model=None):
    """The trainer `cfg.TRAINER.NAME` with its model built.

    Without `classnames` it reads the dataset through Dassl's data manager, as train.py does.
    With `classnames` (this run's classes, in label order) it is built without data loaders:
    for predicting, exporting, benchmarking and testing; `all_classnames` are the dataset's
    classes in label order when they differ (base-to-new training: base + new), and
    `clip_model` a CLIP already loaded from MODEL.BACKBONE.NAME in the PREC dtype, shared
    instead of loaded again (a trainer that trains CLIP weights takes a copy).
    """
    return get_trainer_class(cfg.TRAINER.NAME)(cfg, classnames, all_classnames, clip_model)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
