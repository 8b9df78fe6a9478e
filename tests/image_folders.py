"""Generated folders of images in ImageFolder's two layouts (docs/DATASETS.md, "Your own dataset"),
and a copy of configs/datasets/image_folder.yaml edited as a user would edit it."""

import os
import re

import numpy as np
from PIL import Image

from tests.conftest import ROOT


def write_images(folder, count, rng, ext=".jpg"):
    """`count` images of random pixels (40 px) in `folder`, named 000.jpg, 001.jpg, ..."""
    os.makedirs(folder, exist_ok=True)
    for k in range(count):
        pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{k:03d}{ext}"))


def make_pool(root, folder, counts, seed=0):
    """DATASET.ROOT/<folder>/<class>/<image>: `counts` maps class folders to image counts."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        write_images(os.path.join(root, folder, name), n, rng)
    return os.path.join(root, folder)


def make_pre_split(root, folder, counts, seed=0):
    """DATASET.ROOT/<folder>/<split>/<class>/<image>: `counts` maps split -> {class: count}."""
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for name, n in per_class.items():
            write_images(os.path.join(root, folder, split, name), n, rng)
    return os.path.join(root, folder)


def user_config(path, folder, create_split=False, prompts=None):
    """configs/datasets/image_folder.yaml copied to `path` with IMAGE_FOLDER.DIR (and
    CREATE_SPLIT) set, and optionally DATASET.PROMPTS keys replaced ({key: YAML text})."""
    with open(os.path.join(ROOT, "configs", "datasets", "image_folder.yaml"), encoding="utf-8") as f:
        text = f.read()
    text = text.replace('    DIR: ""', f'    DIR: "{folder}"', 1)
    text = text.replace("  CREATE_SPLIT: False", f"  CREATE_SPLIT: {create_split}", 1)
    for key, value in (prompts or {}).items():
        # Replace the key's whole block (its line and the list lines under it).
        text, n = re.subn(rf"    {key}:.*\n(      - .*\n|      #.*\n)*", f"    {key}: {value}\n", text)
        assert n == 1, key
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)
