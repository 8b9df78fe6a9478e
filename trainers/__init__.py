"""Dassl trainers of this repository; importing the package registers every one of them.

Each trainer module registers its class in Dassl's TRAINER_REGISTRY and gives the class an
`add_config(cfg)` that declares its own config keys, so adding a trainer edits no list.
"""

import importlib
import pkgutil

from dassl.engine import TRAINER_REGISTRY

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def repository_trainers():
    """Names of the trainers defined in this package (Dassl registers its own ones too)."""
    names = TRAINER_REGISTRY.registered_names()
    return sorted(n for n in names if TRAINER_REGISTRY.get(n).__module__.startswith(__name__ + "."))


def get_trainer_class(name):
    if name not in repository_trainers():
        raise ValueError(f"Unknown trainer {name!r}: choose one of {', '.join(repository_trainers())}")
    return TRAINER_REGISTRY.get(name)
