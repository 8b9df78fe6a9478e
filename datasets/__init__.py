"""Dassl datasets in CoOp's on-disk layout; importing the package registers all of them."""

import importlib
import pkgutil


def add_config(cfg):
    """Declare the DATASET keys this package reads on a Dassl cfg (before merging files)."""
    # Base-to-new protocol: "all" classes, the "base" first half of sorted labels, or the "new" rest.
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    # Explicit opt-in to create a missing split_zhou_*.json at random (not comparable to papers).
    cfg.DATASET.CREATE_SPLIT = False
    # How NUM_SHOTS images per class are drawn: "dassl" (Python's random seeded with SEED, saved
    # in split_fewshot/shot_<K>-seed_<S>.json, the prompt methods' samples) or "lpclip" (CoOp's
    # linear-probe scripts: numpy seeded with SEED, train then val, nothing saved).
    cfg.DATASET.FEWSHOT_SAMPLING = "dassl"
    # Readers with keys of their own (ImageFolder's folder) declare them in their module.
    for module in _MODULES:
        if hasattr(module, "add_config"):
            module.add_config(cfg)


# Every module registers its readers on import, so adding a dataset edits no list here.
_MODULES = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
