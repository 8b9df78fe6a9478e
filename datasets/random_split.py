"""New random splits from a raw layout, only ever used with DATASET.CREATE_SPLIT True.

Rows are [path relative to the image folder, label, classname], as in split_zhou_*.json.
"""

import os
import random
from collections import defaultdict

from .coop_dataset import SPLIT_NAMES, list_files, list_folders

# A fixed seed: the split does not depend on which run (or SEED) happened to create it.
SPLIT_SEED = 1
# CoOp's fractions: per class 50% train, 20% val, the rest test; 20% of trainval for val.
TRAIN_FRACTION = 0.5
VAL_FRACTION = 0.2
# One image per split at least.
MIN_IMAGES = 3


def split_class_folders(image_dir, ignored=(), renames=None):
    """Split a folder-per-class layout; labels follow the sorted folder names."""
    renames = renames or {}
    rng = random.Random(SPLIT_SEED)
    folders = [f for f in list_folders(image_dir) if f not in ignored]
    split = {name: [] for name in SPLIT_NAMES}
    for label, folder in enumerate(folders):
        rows = [
            [f"{folder}/{im}", label, renames.get(folder, folder)]
            for im in list_files(os.path.join(image_dir, folder))
        ]
        if len(rows) < MIN_IMAGES:
            raise ValueError(
                f"Class folder {os.path.join(image_dir, folder)} has {len(rows)} images; "
                f"a train/val/test split needs at least {MIN_IMAGES}."
            )
        for name, part in zip(SPLIT_NAMES, split_rows(rows, rng)):
            split[name] += part
    return split


def split_rows(rows, rng):
    """One class's rows (at least MIN_IMAGES), shuffled by `rng` and cut into (train, val, test)."""
    rng.shuffle(rows)
    # Small classes still get one image in each split.
    n_val = max(1, round(len(rows) * VAL_FRACTION))
    n_train = max(1, min(round(len(rows) * TRAIN_FRACTION), len(rows) - n_val - 1))
    return rows[:n_train], rows[n_train : n_train + n_val], rows[n_train + n_val :]


def split_train_val(trainval, test):
    """Hold out VAL_FRACTION of each class of an official trainval list as val."""
    rng = random.Random(SPLIT_SEED)
    by_label = defaultdict(list)
    for row in trainval:
        by_label[row[1]].append(row)
    split = {"train": [], "val": [], "test": list(test)}
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        n_val = max(1, round(len(rows) * VAL_FRACTION))
        split["val"] += rows[:n_val]
        split["train"] += rows[n_val:]
    return split
