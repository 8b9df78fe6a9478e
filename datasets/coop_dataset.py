"""Shared machinery for datasets stored in CoOp's on-disk layout (see docs/DATASETS.md).

A reader subclasses `CoOpDataset`, names its folders and split file, and overrides
`read_split` (and `create_split`) only where its layout differs from a `split_zhou_*.json`.
Everything is kept as `Sample` tuples until the very end so that a missing image is reported
with the file that referenced it, rather than by `Datum`'s bare assert.
"""

import json
import math
import os
import random
from collections import defaultdict
from typing import NamedTuple

import numpy as np
from dassl.data.datasets import DatasetBase, Datum

from clipprompt.atomic import naming_write_errors

from .image_check import check_images

SUBSAMPLE_MODES = ("all", "base", "new")
FEWSHOT_SAMPLINGS = ("dassl", "lpclip")
# Few-shot validation sets stay small: CoOp takes at most 4 images per class from val.
MAX_VAL_SHOTS = 4
SPLIT_NAMES = ("train", "val", "test")


class Sample(NamedTuple):
    path: str  # absolute image path
    label: int
    classname: str


def dataset_key(cfg, key):
    """Read cfg.DATASET.<key>, explaining how to declare the keys this package adds."""
    if key not in cfg.DATASET:
        raise KeyError(
            f"cfg.DATASET.{key} is not declared: call datasets.add_config(cfg) before merging config files."
        )
    return cfg.DATASET[key]


def read_text(path, what):
    """The text of the UTF-8 file `path`, with or without a byte-order mark (`what` names it in
    the error)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}): "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None


def read_json(path, what="JSON file"):
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}): download or create it again.") from None


def write_new_json(obj, path):
    """Write `path` atomically and never replace an existing file.

    Runs with several seeds may start together: a hard link fails if the target exists and
    readers never see a half-written file.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with naming_write_errors(path), open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=0)
        os.link(tmp, path)  # FileExistsError when another run wrote it first
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def require_path(path, what, hint):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} not found. {hint}")


def read_lines(path, what, hint):
    """The non-blank lines of the text file `path`, stripped; a missing file is an error that
    names it (`what`) and says what to download (`hint`)."""
    require_path(path, what, hint)
    return [line.strip() for line in read_text(path, what).split("\n") if line.strip()]


def list_files(folder):
    """Sorted names of the non-hidden files in `folder`: sorted so that samples are reproducible."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def list_folders(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class CoOpDataset(DatasetBase):
    """A dataset under DATASET.ROOT in CoOp's layout, with few-shot and base/new subsampling.

    Attributes added to Dassl's: `all_classnames` (every class in label order, before
    subsampling), `subsample` (the DATASET.SUBSAMPLE_CLASSES mode), `num_shots` (requested) and
    `train_counts` (training images per class, in label order); `summary()` describes them.
    Every listed image is checked to open (`image_check`) before anything trains.
    """

    folder = ""  # dataset folder under DATASET.ROOT, as named in CoOp's DATASETS.md
    image_folder = ""  # folder inside `folder` that split paths are relative to
    split_file = ""  # split_zhou_<Name>.json inside `folder`
    # What to download, appended to every "not found" error.
    download_hint = "See docs/DATASETS.md."
    test_only = False  # ImageNet variants: train_x = test = the data, no val (as in CoOp)
    val_is_test = False  # ImageNet: the official val set is the test set and also serves as val

    def __init__(self, cfg):
        self.create_split_if_missing = bool(dataset_key(cfg, "CREATE_SPLIT"))
        self.fewshot_sampling = dataset_key(cfg, "FEWSHOT_SAMPLING")
        if self.fewshot_sampling not in FEWSHOT_SAMPLINGS:
            raise ValueError(
                f"DATASET.FEWSHOT_SAMPLING must be one of {FEWSHOT_SAMPLINGS}, got {self.fewshot_sampling!r}."
            )
        self.subsample = dataset_key(cfg, "SUBSAMPLE_CLASSES")
        if self.subsample not in SUBSAMPLE_MODES:
            raise ValueError(
                f"DATASET.SUBSAMPLE_CLASSES must be one of {SUBSAMPLE_MODES}, got {self.subsample!r}."
            )
        if self.test_only and self.subsample != "all":
            raise ValueError(
                f"{type(self).__name__} is a test-only dataset with fixed classes: "
                f"DATASET.SUBSAMPLE_CLASSES must be 'all', got {self.subsample!r}."
            )

        self.dataset_dir = self._find_dataset_dir(cfg)
        self.image_dir = os.path.join(self.dataset_dir, self.image_folder)
        self.split_path = os.path.join(self.dataset_dir, self.split_file)
        self._split_rows = None  # read on first use: FGVCAircraft and ImageNet have no split file
        for path in self.required_paths():
            require_path(path, "Image folder", self.download_hint)

        self.all_classnames = list(self.read_classnames())
        test = self.read_split("test")
        # ImageNet validates on its test set, except where lpclip's sampling draws from it.
        self.val_is_test_split = self.val_is_test
        if self.test_only:
            train, val = test, None
        else:
            train, val = self._train_and_val(cfg, test)
        train, val, test = self._subsample(train, val, test)
        check_images([s.path for split in (train, val, test) if split for s in split], self.download_hint)
        self.num_shots = -1 if self.test_only else cfg.DATASET.NUM_SHOTS
        self.train_counts = [0] * len(self._kept_labels())
        for s in train:
            self.train_counts[s.label] += 1

        test = self._to_datums(test)
        # Shared lists, not copies: ImageNet's test set has 50,000 images.
        train = test if self.test_only else self._to_datums(train)
        val = test if self.val_is_test_split else self._to_datums(val)
        super().__init__(train_x=train, val=val, test=test)
        # Dassl derives class names from train_x, which can lack a class (few images);
        # the class list is known, so state it.
        kept = self._kept_labels()
        self._classnames = [self.all_classnames[y] for y in kept]
        self._lab2cname = dict(enumerate(self._classnames))
        self._num_classes = len(kept)
        short = self.short_classes()
        if short:
            listed = ", ".join(f"{name} ({n})" for name, n in list(short.items())[:10])
            print(
                f"Warning: DATASET.NUM_SHOTS is {self.num_shots}, but {len(short)} of {len(kept)} classes "
                f"have fewer training images and train on all they have: {listed}"
                f"{', ...' if len(short) > 10 else ''} (see data_summary.json)"
            )

    def short_classes(self):
        """{class name: training images} of the classes with fewer than NUM_SHOTS."""
        if self.num_shots <= 0:
            return {}
        counts = zip(self._classnames, self.train_counts)
        return {name: n for name, n in counts if n < self.num_shots}

    def summary(self):
        """The training data of this run, as train.py records it in data_summary.json.

        `effective_shots` is the fewest training images of a class (None when NUM_SHOTS <= 0 asks
        for all images); it is below `num_shots` exactly when `short_classes` is not empty.
        """
        return {
            "dataset": type(self).__name__,
            "subsample_classes": self.subsample,
            "num_shots": self.num_shots,
            "fewshot_sampling": self.fewshot_sampling,
            "effective_shots": min(self.train_counts) if self.num_shots > 0 else None,
            "short_classes": self.short_classes(),
            "train_images_per_class": dict(zip(self._classnames, self.train_counts)),
        }

    # ---- layout: overridden by readers whose files differ ----------------------------------

    def required_paths(self):
        return [self.image_dir]

    def read_classnames(self):
        """Class names in label order; by default the union of the split file's rows."""
        names = {}
        split = self._split_json()
        for name in SPLIT_NAMES:
            for _, label, classname in split[name]:
                if names.setdefault(int(label), classname) != classname:
                    raise ValueError(
                        f"Split file {self.split_path} gives label {label} two class names: "
                        f"{names[int(label)]!r} and {classname!r}."
                    )
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"Split file {self.split_path}: labels are not 0..{len(names) - 1}.")
        return [names[y] for y in range(len(names))]

    def read_split(self, name):
        """Samples of split `name` ("train", "val" or "test"), images checked to exist."""
        rows = self._split_json()[name]
        return self.samples_from_rows(rows, self.image_dir, f"split file {self.split_path}")

    def create_split(self):
        """Return a new random {"train", "val", "test"} of rows; None (here) when unsupported."""

    # ---- helpers for readers ---------------------------------------------------------------

    def samples_from_rows(self, rows, base_dir, source):
        """[relative_path, label, classname] rows -> Samples, checking images and labels."""
        samples = []
        for rel_path, label, classname in rows:
            path = os.path.join(base_dir, rel_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Image {path} listed in {source} not found. {self.download_hint}")
            label = int(label)
            expected = self.all_classnames[label] if 0 <= label < len(self.all_classnames) else None
            if classname != expected:
                raise ValueError(
                    f"{source} has row {[rel_path, label, classname]}, but label {label} of "
                    f"{type(self).__name__} is {expected!r}: the file does not belong to this "
                    "dataset's class list."
                )
            samples.append(Sample(path, label, classname))
        return samples

    # ---- internals -------------------------------------------------------------------------

    def _find_dataset_dir(self, cfg):
        root = cfg.DATASET.ROOT
        if not root:
            raise ValueError(
                f"DATASET.ROOT is not set: set it to the folder that holds {self.folder}/ "
                "(see docs/DATASETS.md)."
            )
        root = os.path.abspath(os.path.expanduser(root))
        require_path(root, "DATASET.ROOT", "Set DATASET.ROOT to an existing folder.")
        dataset_dir = os.path.join(root, self.folder)
        require_path(dataset_dir, "Dataset folder", self.download_hint)
        return dataset_dir

    def _split_json(self):
        if self._split_rows is None:
            if not os.path.isfile(self.split_path):
                self._create_missing_split()
            self._split_rows = read_json(self.split_path, "Split file")
        return self._split_rows

    def missing_split_message(self):
        """What to do when the split file is missing and DATASET.CREATE_SPLIT is False."""
        return (
            f"Split file {self.split_path} not found. Download it from the CoOp DATASETS.md link for "
            f"{type(self).__name__}, or set DATASET.CREATE_SPLIT True to create a new random split "
            "(numbers will not be comparable to published ones)."
        )

    def _create_missing_split(self):
        name = type(self).__name__
        where = f"Download it from the CoOp DATASETS.md link for {name}"
        if not self.create_split_if_missing:
            raise FileNotFoundError(self.missing_split_message())
        split = self.create_split()
        if split is None:
            raise FileNotFoundError(
                f"Split file {self.split_path} not found, and creating a split is not "
                f"supported for {name}. {where}."
            )
        write_new_json(split, self.split_path)
        print(
            f"Created a new random split {self.split_path} "
            "(DATASET.CREATE_SPLIT True; numbers are not comparable to published ones)"
        )

    def _train_and_val(self, cfg, test):
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots <= 0:
            train = self.read_split("train")
            return train, test if self.val_is_test else self.read_split("val")
        seed = cfg.SEED
        if self.fewshot_sampling == "lpclip":
            return self._lpclip_sample(num_shots, seed, test)
        splits = ("train",) if self.val_is_test else ("train", "val")
        if seed < 0:
            print(
                f"SEED {seed} < 0: sampling {num_shots} shots per class at random; "
                "the sample is neither seeded nor cached"
            )
            sample = self._sample_shots(splits, num_shots, random.Random())
        else:
            cache = os.path.join(self.dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.json")
            if os.path.exists(cache):
                print(f"Reading few-shot sample from {cache}")
                sample = self._read_cache(cache, splits)
            else:
                sample = self._sample_shots(splits, num_shots, random.Random(seed))
                self._write_cache(cache, sample)
        return sample["train"], test if self.val_is_test else sample["val"]

    def _read_cache(self, cache, splits):
        rows = read_json(cache, "Few-shot cache")
        missing = [name for name in splits if name not in rows]
        if missing:
            raise ValueError(f"Few-shot cache {cache} has no {missing} rows; move it away to resample.")
        source = f"few-shot cache {cache}"
        return {name: self.samples_from_rows(rows[name], self.dataset_dir, source) for name in splits}

    def _sample_shots(self, splits, num_shots, rng):
        sample = {}
        for name in splits:
            shots = num_shots if name == "train" else min(num_shots, MAX_VAL_SHOTS)
            by_label = defaultdict(list)
            for s in self.read_split(name):
                by_label[s.label].append(s)
            sample[name] = []
            for label in sorted(by_label):
                items = by_label[label]
                # CoOp keeps every image of a class that has fewer than K.
                sample[name] += rng.sample(items, shots) if len(items) > shots else items
        return sample

    def _lpclip_sample(self, num_shots, seed, test):
        """(train, val) as CoOp's lpclip/linear_probe.py draws them: numpy seeded with SEED, for
        each label in order NUM_SHOTS training images without replacement, then min(NUM_SHOTS, 4)
        validation images per label (ImageNet: from its test set, which is its val set). A class
        with fewer images keeps all of them (lpclip stops with an error there)."""
        if seed < 0:
            raise ValueError(
                "DATASET.FEWSHOT_SAMPLING lpclip seeds numpy with SEED, which is negative: pass --seed"
            )
        rng = np.random.RandomState(seed)
        train = self._lpclip_draw(rng, self.read_split("train"), num_shots)
        self.val_is_test_split = False
        val_pool = test if self.val_is_test else self.read_split("val")
        return train, self._lpclip_draw(rng, val_pool, min(num_shots, MAX_VAL_SHOTS))

    @staticmethod
    def _lpclip_draw(rng, samples, shots):
        by_label = defaultdict(list)
        for s in samples:
            by_label[s.label].append(s)
        drawn = []
        for label in sorted(by_label):
            items = by_label[label]
            # np.random.choice over the class's positions in split order, as lpclip draws from
            # its feature array; with exactly `shots` images it still draws (a permutation).
            picked = (
                rng.choice(len(items), size=shots, replace=False)
                if len(items) >= shots
                else range(len(items))
            )
            drawn += [items[i] for i in picked]
        return drawn

    def _write_cache(self, cache, sample):
        # Relative paths, so that moving DATASET.ROOT keeps the cache valid.
        rows = {
            name: [
                [os.path.relpath(s.path, self.dataset_dir).replace(os.sep, "/"), s.label, s.classname]
                for s in samples
            ]
            for name, samples in sample.items()
        }
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        try:
            write_new_json(rows, cache)
        except FileExistsError:
            return  # another run with the same shots and seed wrote the same sample first
        print(f"Saved few-shot sample to {cache}")

    def _kept_labels(self):
        n = len(self.all_classnames)
        n_base = math.ceil(n / 2)
        return {"all": range(n), "base": range(n_base), "new": range(n_base, n)}[self.subsample]

    def _subsample(self, *splits):
        if self.subsample == "all":
            return splits
        kept = self._kept_labels()
        offset = kept.start  # new classes are relabelled from 0
        return [
            None
            if samples is None
            else [s._replace(label=s.label - offset) for s in samples if s.label in kept]
            for samples in splits
        ]

    @staticmethod
    def _to_datums(samples):
        if samples is None:
            return None
        return [Datum(impath=s.path, label=s.label, classname=s.classname) for s in samples]
