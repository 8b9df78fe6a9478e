"""The demo world's downstream (prompt-learning) dataset: few-shot train, val and test splits
in the CoOp on-disk layout, generated deterministically from a seed.

Usage: python -m tools.demo_world --root DIR [--seed N]
"""

import argparse
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from tools.demo import world
from tools.demo.render import render
from tools.demo.world import (
    ALL_CLASSNAMES,
    CLASSNAMES,
    DATASET_DIR,
    DEFAULT_SEED,
    DOWNSTREAM_HUE_SHIFT,
    IMAGE_DIR,
    SPLIT_FILE,
    SPLIT_SIZES,
    STYLES,
    class_folder,
    class_parts,
)

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "unseen": 3}


def _class_stream(seed, split, name, n):
    """The random stream of (seed, split, class) and its balanced styles (its first draw)."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], ALL_CLASSNAMES.index(name)])
    return rng, rng.permutation(np.resize(np.arange(len(STYLES)), n))


def render_class_set(seed, split, name, n, shifted=True):
    """n downstream images (cluttered, downstream camera, styles balanced) of class `name`.

    Returns (uint8 images, style indices). Each (seed, split, class) has its own random stream,
    so a class's images do not depend on the other classes or on the split sizes of others.
    shifted=False gives the same scenes without clutter and with the pretraining camera
    (to measure the effect of the shift).
    """
    rng, style_ids = _class_stream(seed, split, name, n)
    shape_index, colour_index = class_parts(name)
    hue_shift = DOWNSTREAM_HUE_SHIFT if shifted else 0.0
    images = render(rng, [shape_index] * n, [colour_index] * n, style_ids, shifted, hue_shift)
    return images, style_ids


def render_split(seed, split, n_per_class=None, classnames=None, shifted=True):
    """(images, labels, style indices) of a split; labels index `classnames` (default CLASSNAMES).

    With the defaults this is exactly the content of the generated dataset's split
    (split "unseen" with classnames=UNSEEN_CLASSNAMES gives the never-rendered compositions).
    """
    classnames = CLASSNAMES if classnames is None else classnames
    n = SPLIT_SIZES.get(split, SPLIT_SIZES["test"]) if n_per_class is None else n_per_class
    images, labels, styles = [], [], []
    for label, name in enumerate(classnames):
        imgs, style_ids = render_class_set(seed, split, name, n, shifted)
        images.append(imgs)
        labels += [label] * n
        styles.append(style_ids)
    return np.concatenate(images), np.array(labels), np.concatenate(styles)


def _png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _image_path(name, split, i, style_index):
    return f"{class_folder(name)}/{split}_{i:03d}_{STYLES[style_index]}.png"


def world_split(seed=DEFAULT_SEED, split_sizes=None):
    """The split file's content {split: [[path under images/, label, classname], ...]}.

    Cheap (renders nothing): `generate` uses it to reject a different world early.
    """
    split_sizes = dict(SPLIT_SIZES if split_sizes is None else split_sizes)
    split = {}
    for split_name, n in split_sizes.items():
        split[split_name] = [
            [_image_path(name, split_name, i, style_index), label, name]
            for label, name in enumerate(CLASSNAMES)
            for i, style_index in enumerate(_class_stream(seed, split_name, name, n)[1])
        ]
    return split


def build_world_files(seed=DEFAULT_SEED, split_sizes=None):
    """Every file of the dataset as {relative path under demo_world/: bytes}."""
    split_sizes = dict(SPLIT_SIZES if split_sizes is None else split_sizes)
    files = {}
    for split_name, n in split_sizes.items():
        for name in CLASSNAMES:
            images, style_ids = render_class_set(seed, split_name, name, n)
            for i, (image, style_index) in enumerate(zip(images, style_ids)):
                files[f"{IMAGE_DIR}/{_image_path(name, split_name, i, style_index)}"] = _png_bytes(image)
    files[SPLIT_FILE] = _split_json(world_split(seed, split_sizes)).encode()
    return files


def _split_json(split):
    """The split as JSON with one row per line (readable, and diffs stay small)."""
    parts = []
    for name, rows in split.items():
        body = ",\n".join("    " + json.dumps(row) for row in rows)
        parts.append(f"  {json.dumps(name)}: [\n{body}\n  ]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# Written into the dataset folder by the few-shot sampler of datasets/coop_dataset.py.
FEWSHOT_CACHE_DIR = "split_fewshot"


def _existing_files(directory):
    """Files of the world in `directory` (the few-shot caches of training runs excluded)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        if dirpath == directory and FEWSHOT_CACHE_DIR in dirnames:
            dirnames.remove(FEWSHOT_CACHE_DIR)
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            found[os.path.relpath(path, directory).replace(os.sep, "/")] = _read(path)
    return found


def generate(root, seed=DEFAULT_SEED, split_sizes=None, log=print):
    """Write <root>/demo_world (images + split file); return its path.

    An existing identical world is left as it is; an existing different one is an error.
    """
    target = os.path.join(root, DATASET_DIR)
    different = FileExistsError(
        f"{target} exists and differs from the world that seed {seed} generates. "
        "Delete it yourself, or pass another --root."
    )
    if os.path.exists(target):
        split_path = os.path.join(target, SPLIT_FILE)
        expected = _split_json(world_split(seed, split_sizes)).encode()
        if not os.path.isfile(split_path) or _read(split_path) != expected:
            raise different
    files = build_world_files(seed, split_sizes)
    if os.path.exists(target):
        if _existing_files(target) != files:
            raise different
        log(f"{target} already holds this world (seed {seed}): nothing to do.")
        return target
    os.makedirs(root, exist_ok=True)
    # Written to a sibling temporary folder then renamed, so that an interrupted run leaves
    # no half-written world behind.
    staging = tempfile.mkdtemp(prefix=".demo_world-", dir=root)
    try:
        for rel, data in files.items():
            path = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n_images = len(files) - 1
    log(f"Wrote {n_images} images and {SPLIT_FILE} to {target}")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_world", description=world.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--root", required=True, help="dataset root (DATASET.ROOT)")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the images (default {DEFAULT_SEED}: the demo's)",
    )
    args = parser.parse_args(argv)
    try:
        generate(args.root, args.seed)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
