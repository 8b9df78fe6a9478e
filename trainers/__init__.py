"""Dassl trainers of this repository, and the run bookkeeping beside them (`trainers.runs`).

Each trainer module registers its class in Dassl's TRAINER_REGISTRY and gives the class an
`add_config(cfg)` that declares its own config keys, so adding a trainer edits no list. The
trainer modules are imported (registered) the first time a trainer is looked up, and Dassl only
then: `trainers.runs` stays importable without it.

Public API: `make_cfg` (a trainer's validated config), `read_config_file` (a YAML config with its
`_BASE_` chain) and `build_trainer` (a trainer from a config, with Dassl's data loaders, or for
given class names without them).
"""

import importlib
import pkgutil

__all__ = ["build_trainer", "get_trainer_class", "make_cfg", "read_config_file", "repository_trainers"]

# Modules of this package that define no trainer.
_SUPPORT = {"config", "loop", "prompt_trainer", "runs"}


def _registry():
    """Dassl's trainer registry with every trainer of this package registered."""
    from dassl.engine import TRAINER_REGISTRY

    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SUPPORT:
            importlib.import_module(f"{__name__}.{module.name}")
    return TRAINER_REGISTRY


def repository_trainers():
    """Names of the trainers defined in this package (Dassl registers its own ones too)."""
    registry = _registry()
    names = registry.registered_names()
    return sorted(n for n in names if registry.get(n).__module__.startswith(__name__ + "."))


def get_trainer_class(name):
    if name not in repository_trainers():
        raise ValueError(f"Unknown trainer {name!r}: choose one of {', '.join(repository_trainers())}")
    return _registry().get(name)


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


def make_cfg(*args, **kwargs):
    """`trainers.config.make_cfg` (its docstring)."""
    from .config import make_cfg as make

    return make(*args, **kwargs)


def read_config_file(path):
    """`trainers.config.read_config_file` (its docstring)."""
    from .config import read_config_file as read

    return read(path)
