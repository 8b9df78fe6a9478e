"""Your own images as a dataset: `ImageFolder` (docs/DATASETS.md, "Your own dataset").

The images live in DATASET.ROOT/<DATASET.IMAGE_FOLDER.DIR>/, in one of two layouts:

- one pool, `<class>/<image>`: split per class into train/val/test once, only with
  DATASET.CREATE_SPLIT True, and saved as `split_zhou_ImageFolder.json` next to the class
  folders (CoOp's split format, paths relative to the folder); later runs read that file;
- pre-split, `train/<class>/<image>`, `test/<class>/<image>` and optionally `val/<class>/<image>`
  (without val/ there is no validation set).

Labels follow the sorted class-folder names, so base is the first half of them as for every
dataset here. Class names are the folder names with underscores as spaces, or come from
`classnames.txt` in the folder, one `<folder> <class name>` line per class folder.
"""

import os
import random
from collections import defaultdict

from dassl.data.datasets import DATASET_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.templates import clean_classname, normalize_template

from .coop_dataset import SPLIT_NAMES, CoOpDataset, Sample, dataset_key, list_files, list_folders
from .random_split import MIN_IMAGES, SPLIT_SEED, split_rows

SPLIT_FILE = "split_zhou_ImageFolder.json"
CLASSNAMES_FILE = "classnames.txt"
# Written by CoOpDataset next to the data; never a class.
FEWSHOT_FOLDER = "split_fewshot"
# Files with other extensions are not images (README, annotations): left out, and said so.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SHOWN = 5  # examples named in an error


def add_config(cfg):
    cfg.DATASET.IMAGE_FOLDER = CN()
    # ImageFolder: the folder under DATASET.ROOT that holds your images (set it in your copy
    # of configs/datasets/image_folder.yaml; see docs/DATASETS.md, "Your own dataset").
    cfg.DATASET.IMAGE_FOLDER.DIR = ""


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _examples(items):
    items = list(items)
    return ", ".join(map(str, items[:SHOWN])) + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def _class_changes(old, new):
    """What differs between two class lists in label order, in words."""
    if len(old) == len(new):
        return ", ".join(f"label {y} {a!r} is now {b!r}" for y, (a, b) in enumerate(zip(old, new)) if a != b)
    added = [repr(n) for n in new if n not in old]
    removed = [repr(n) for n in old if n not in new]
    return "; ".join(
        f"{what} {', '.join(names)}" for what, names in (("added", added), ("removed", removed)) if names
    )


def read_classnames_file(path, folders):
    """Class names of `folders` from `path` ("<folder> <class name>" per line, every class
    folder exactly once; blank lines ignored)."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # with or without a byte-order mark
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"Cannot read the class-name file {path} ({err}): it must be UTF-8 text with one "
            "'<folder> <class name>' line per class folder."
        ) from None
    names = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            raise ValueError(f"{path} line {number}: {line!r} is not '<folder> <class name>'.")
        if parts[0] in names:
            raise ValueError(f"{path} line {number}: folder {parts[0]!r} is listed twice.")
        names[parts[0]] = normalize_template(parts[1])
    problems = []
    unknown, missing = sorted(set(names) - set(folders)), sorted(set(folders) - set(names))
    if unknown:
        problems.append(f"it lists {_examples(unknown)}, which are not class folders")
    if missing:
        problems.append(f"it has no line for the class folders {_examples(missing)}")
    if problems:
        raise ValueError(f"{path} must name every class folder exactly once: {'; '.join(problems)}.")
    return [names[f] for f in folders]


@DATASET_REGISTRY.register()
class ImageFolder(CoOpDataset):
    """A folder of your images, in the pool or the pre-split layout (module docstring)."""

    image_folder = ""  # split-file paths are relative to the dataset folder itself
    split_file = SPLIT_FILE

    def __init__(self, cfg):
        self.folder = dataset_key(cfg, "IMAGE_FOLDER").DIR
        if not self.folder:
            raise ValueError(
                "DATASET.IMAGE_FOLDER.DIR is not set: copy configs/datasets/image_folder.yaml to "
                "configs/datasets/<your dataset>.yaml and set it to the folder under DATASET.ROOT "
                "that holds your images (docs/DATASETS.md, 'Your own dataset')."
            )
        self.download_hint = (
            f"Put your images in DATASET.ROOT/{self.folder}/<class>/ (or in train/<class>/ and "
            "test/<class>/, optionally val/<class>/); see docs/DATASETS.md, 'Your own dataset'."
        )
        self.split_dirs = None  # {split: folder} of the pre-split layout; None: one pool
        self._split_checked = False
        self._reported = set()  # folders whose non-image files were already named
        super().__init__(cfg)
        if not self.val and (cfg.TEST.FINAL_MODEL == "best_val" or cfg.TEST.SPLIT == "val"):
            # Dassl would quietly select or report on the test set instead.
            raise ValueError(
                f"{self.dataset_dir} has no val/ folder, so there is no validation set: "
                "TEST.FINAL_MODEL best_val and TEST.SPLIT val need one. Add val/<class>/ images "
                "or keep TEST.FINAL_MODEL last_step and TEST.SPLIT test."
            )

    # ---- layout --------------------------------------------------------------------------

    def read_classnames(self):
        self.split_dirs = self._find_split_dirs()
        self.class_folders = self._find_class_folders()
        path = os.path.join(self.dataset_dir, CLASSNAMES_FILE)
        if os.path.exists(path):
            names = read_classnames_file(path, self.class_folders)
        else:
            names = [clean_classname(f) for f in self.class_folders]
        by_name = defaultdict(list)
        for folder, name in zip(self.class_folders, names):
            by_name[name].append(folder)
        clashes = {name: folders for name, folders in by_name.items() if len(folders) > 1}
        if clashes:
            raise ValueError(
                f"Class folders of {self.dataset_dir} give the same class name: "
                + "; ".join(f"{folders} -> {name!r}" for name, folders in clashes.items())
                + f". Rename a folder or name the classes in {path}."
            )
        return names

    def _find_split_dirs(self):
        """{split: folder} when the folder is pre-split (train/ and test/), None for one pool."""
        present = [name for name in SPLIT_NAMES if os.path.isdir(os.path.join(self.dataset_dir, name))]
        if not present:
            return None
        if "train" not in present or "test" not in present:
            raise ValueError(
                f"{self.dataset_dir} has {', '.join(n + '/' for n in present)} but a pre-split layout "
                "needs train/ and test/ (val/ is optional). For one pool of class folders, rename "
                "class folders called train, val or test."
            )
        others = set(list_folders(self.dataset_dir)) - set(SPLIT_NAMES) - {FEWSHOT_FOLDER}
        if others:
            raise ValueError(
                f"{self.dataset_dir} is pre-split (train/, test/) but also holds {_examples(sorted(others))}: "
                "class folders go inside train/, val/ and test/."
            )
        return {name: os.path.join(self.dataset_dir, name) for name in present}

    def _find_class_folders(self):
        top = self.split_dirs["train"] if self.split_dirs else self.dataset_dir
        folders = [f for f in list_folders(top) if self.split_dirs or f != FEWSHOT_FOLDER]
        if not folders:
            raise FileNotFoundError(f"No class folders in {top}. {self.download_hint}")
        loose = [f for f in list_files(self.dataset_dir) if is_image(f)]
        if loose:
            raise ValueError(
                f"Images directly in {self.dataset_dir} belong to no class ({_examples(loose)}): "
                "move them into a class folder."
            )
        if self.split_dirs:
            self._check_pre_split_classes(folders)
        return folders

    def _check_pre_split_classes(self, folders):
        """Every split folder has exactly the classes of train/, each with an image."""
        counts = {}
        for name, split_dir in self.split_dirs.items():
            extra = sorted(set(list_folders(split_dir)) - set(folders))
            if extra:
                raise ValueError(
                    f"{split_dir} has class folders that train/ lacks: {_examples(extra)}. "
                    "Every class needs training images."
                )
            counts[name] = {f: len(self._images(os.path.join(split_dir, f))) for f in folders}
        empty = [f for f in folders if min(c[f] for c in counts.values()) == 0]
        if empty:
            raise ValueError(
                f"Every class needs at least one image in each of {', '.join(self.split_dirs)} "
                f"under {self.dataset_dir}; too few for: "
                + ", ".join(f"{f} ({', '.join(f'{n} {c[f]}' for n, c in counts.items())})" for f in empty)
                + "."
            )

    def _images(self, folder):
        """Sorted image file names in `folder` (missing folder: none); other files and sub-folders
        without images are named; images in sub-folders are an error (the class is the folder
        right below the dataset folder or a split folder, so they would have no clear class)."""
        if not os.path.isdir(folder):
            return []
        names = list_files(folder)
        images = [n for n in names if is_image(n)]
        nested = {sub: self._images_below(os.path.join(folder, sub)) for sub in list_folders(folder)}
        inside = [path for paths in nested.values() for path in paths]
        if inside:
            raise ValueError(
                f"Images in sub-folders of the class folder {folder} are not part of the dataset: "
                f"{_examples(inside)}. Move them into {folder} itself, or out of {self.dataset_dir}."
            )
        others = [os.path.join(folder, n) for n in names if not is_image(n)]
        others += [os.path.join(folder, sub) + os.sep for sub in nested]
        if others and folder not in self._reported:
            self._reported.add(folder)
            print(f"Not images (by extension), left out: {_examples(others)}")
        return images

    @staticmethod
    def _images_below(folder):
        """Paths of the images anywhere below `folder` (hidden files and folders left out)."""
        found = []
        for parent, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(parent, n) for n in sorted(files) if is_image(n) and not n.startswith(".")]
        return found

    # ---- splits --------------------------------------------------------------------------

    def read_split(self, name):
        if self.split_dirs is None:
            if not self._split_checked:
                self._check_split_file()
                self._split_checked = True
            return super().read_split(name)
        split_dir = self.split_dirs.get(name)
        if split_dir is None:
            return []  # no val/: no validation set
        samples = []
        for label, folder in enumerate(self.class_folders):
            class_dir = os.path.join(split_dir, folder)
            classname = self.all_classnames[label]
            samples += [Sample(os.path.join(class_dir, f), label, classname) for f in self._images(class_dir)]
        return samples

    def _check_split_file(self):
        """The split file has exactly the classes of the class folders (no folder added, removed
        or renamed since, with or without images) and covers every image in them (no image
        added since; a removed one is an error when its row is read)."""
        made = CoOpDataset.read_classnames(self)  # the classes of the split file's rows
        if made != self.all_classnames:
            raise ValueError(
                f"The classes of {self.dataset_dir} changed since the split file {self.split_path} was made "
                f"({len(made)} classes there, {len(self.all_classnames)} now): "
                f"{_class_changes(made, self.all_classnames)}. Undo the change (class folders, "
                f"{CLASSNAMES_FILE}), or {self._new_split_remedy()}"
            )
        listed = {row[0] for name in SPLIT_NAMES for row in self._split_json()[name]}
        on_disk = {
            f"{folder}/{image}"
            for folder in self.class_folders
            for image in self._images(os.path.join(self.dataset_dir, folder))
        }
        unlisted = sorted(on_disk - listed)
        if unlisted:
            raise ValueError(
                f"{len(unlisted)} images in {self.dataset_dir} are not in the split file {self.split_path} "
                f"({_examples(unlisted)}): they were added after the split was made. Remove them, or move "
                f"the split file and {FEWSHOT_FOLDER}/ away and set DATASET.CREATE_SPLIT True to make a "
                "new split."
            )

    def samples_from_rows(self, rows, base_dir, source):
        try:
            return super().samples_from_rows(rows, base_dir, source)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(
                f"{err} The class folders or {CLASSNAMES_FILE} changed since it was written: "
                f"{self._new_split_remedy()}"
            ) from None

    def _new_split_remedy(self):
        if self.split_dirs:
            return f"move {os.path.join(self.dataset_dir, FEWSHOT_FOLDER)} away to draw new samples."
        return (
            f"move {self.split_path} and {FEWSHOT_FOLDER}/ away and set DATASET.CREATE_SPLIT True to make "
            "a new split."
        )

    def _read_cache(self, cache, splits):
        """A few-shot sample drawn before a class was added lacks that class (every class has
        training images): an error rather than a class trained on nothing."""
        sample = super()._read_cache(cache, splits)
        sampled = {s.label for s in sample["train"]}
        missing = [name for label, name in enumerate(self.all_classnames) if label not in sampled]
        if missing:
            remedy = self._new_split_remedy()
            raise ValueError(
                f"The few-shot sample {cache} has no training image of the class "
                f"{', '.join(map(repr, missing))}: it was drawn before the class was added. "
                f"{remedy[0].upper()}{remedy[1:]}"
            )
        return sample

    def missing_split_message(self):
        return (
            f"Split file {self.split_path} not found: {self.dataset_dir} holds one pool of class "
            "folders, which is split into train/val/test (50/20/30% per class) only when you ask: "
            "set DATASET.CREATE_SPLIT True (in your dataset config or on the command line) once; "
            "later runs read the file. Or use the pre-split layout (train/, test/, optional val/)."
        )

    def create_split(self):
        """Per class: CoOp's 50% train, 20% val, 30% test with a fixed seed."""
        caches = os.path.join(self.dataset_dir, FEWSHOT_FOLDER)
        if os.path.isdir(caches) and os.listdir(caches):
            raise FileExistsError(
                f"{caches} holds few-shot samples drawn from an earlier split: move it away before "
                "a new split is made."
            )
        images = {f: self._images(os.path.join(self.dataset_dir, f)) for f in self.class_folders}
        small = [f"{f} ({len(names)})" for f, names in images.items() if len(names) < MIN_IMAGES]
        if small:
            raise ValueError(
                f"Cannot split {self.dataset_dir}: each class needs at least {MIN_IMAGES} images "
                f"(one for each of train, val and test); too few in: {', '.join(small)}."
            )
        rng = random.Random(SPLIT_SEED)
        split = {name: [] for name in SPLIT_NAMES}
        for label, (folder, names) in enumerate(images.items()):
            rows = [[f"{folder}/{n}", label, self.all_classnames[label]] for n in names]
            for name, part in zip(SPLIT_NAMES, split_rows(rows, rng)):
                split[name] += part
        return split
