"""The ImageFolder dataset on generated folders: both layouts, the split made once on request,
class names, and one clear error for each kind of bad folder."""

import json
import os
from pathlib import Path

import pytest
import yaml

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset

import datasets
import trainers
from datasets.image_folder import SPLIT_FILE
from tests.conftest import ROOT
from tests.image_folders import make_pool, make_pre_split, user_config

CLASSES = {"red_fox": 10, "Blue_Jay": 5, "cat": 3, "dog": 4}
SORTED = ["Blue_Jay", "cat", "dog", "red_fox"]  # label order: sorted folder names


def make_cfg(root, folder="mine", create_split=False, shots=-1, seed=1, subsample="all", **extra):
    cfg = get_cfg_default()
    datasets.add_config(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "ImageFolder"
    cfg.DATASET.IMAGE_FOLDER.DIR = folder
    cfg.DATASET.CREATE_SPLIT = create_split
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    for key, value in extra.items():
        cfg.TEST[key] = value
    return cfg


def build(root, **kwargs):
    return build_dataset(make_cfg(root, **kwargs))


def per_class(data):
    counts = {}
    for d in data:
        counts[d.classname] = counts.get(d.classname, 0) + 1
    return counts


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# ---- one pool of class folders, split on request ------------------------------------------


def test_pool_without_a_split_is_an_error_that_creates_nothing(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    before = snapshot(folder)
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path)
    assert os.path.join(folder, SPLIT_FILE) in str(err.value)
    assert "DATASET.CREATE_SPLIT True" in str(err.value)
    assert snapshot(folder) == before


def test_pool_split_is_created_once_then_read(tmp_path, capsys):
    folder = make_pool(tmp_path, "mine", CLASSES)
    ds = build(tmp_path, create_split=True)
    split_file = os.path.join(folder, SPLIT_FILE)
    assert f"Created a new random split {split_file}" in capsys.readouterr().out
    names = ["Blue Jay", "cat", "dog", "red fox"]
    assert ds.all_classnames == ds.classnames == names
    # CoOp's fractions per class (50 / 20 / 30 %), one image at least in each split.
    assert per_class(ds.train_x) == {"red fox": 5, "Blue Jay": 2, "cat": 1, "dog": 2}
    assert per_class(ds.val) == {"red fox": 2, "Blue Jay": 1, "cat": 1, "dog": 1}
    assert per_class(ds.test) == {"red fox": 3, "Blue Jay": 2, "cat": 1, "dog": 1}
    for d in ds.train_x + ds.val + ds.test:
        assert os.path.basename(os.path.dirname(d.impath)) == SORTED[d.label]
    with open(split_file) as f:
        rows = json.load(f)
    assert rows["train"][0][0].count("/") == 1  # paths relative to the folder: <class>/<image>
    created = Path(split_file).read_bytes()

    again = build(tmp_path, create_split=True)  # read, never remade
    assert "Created" not in capsys.readouterr().out and Path(split_file).read_bytes() == created
    assert [d.impath for d in again.test] == [d.impath for d in ds.test]
    assert len(build(tmp_path).test) == len(ds.test)  # the key is needed only to create it


def test_pool_split_is_the_same_wherever_it_is_made(tmp_path):
    for name in ("a", "b"):
        make_pool(tmp_path / name, "mine", CLASSES)
        build(tmp_path / name, create_split=True)
    assert (tmp_path / "a" / "mine" / SPLIT_FILE).read_bytes() == (
        tmp_path / "b" / "mine" / SPLIT_FILE
    ).read_bytes()


def test_pool_few_shot_and_base_new(tmp_path):
    make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    base = build(tmp_path, shots=2, subsample="base")
    new = build(tmp_path, shots=2, subsample="new")
    assert base.classnames == ["Blue Jay", "cat"] and new.classnames == ["dog", "red fox"]
    assert per_class(base.train_x) == {"Blue Jay": 2, "cat": 1}  # all of a class with fewer
    assert {d.label for d in new.test} == {0, 1}
    assert os.path.isfile(tmp_path / "mine" / "split_fewshot" / "shot_2-seed_1.json")


def test_classes_with_too_few_images_are_named_in_one_error(tmp_path):
    folder = make_pool(tmp_path, "mine", {"a": 2, "b": 5, "c": 1, "d": 0})
    with pytest.raises(ValueError) as err:
        build(tmp_path, create_split=True)
    assert "at least 3 images" in str(err.value)
    assert "too few in: a (2), c (1), d (0)." in str(err.value)
    assert not os.path.exists(os.path.join(folder, SPLIT_FILE))


def test_images_added_after_the_split_are_an_error(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    Path(folder, "cat", "new.jpg").write_bytes(Path(folder, "cat", "000.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"1 images in .* are not in the split file .*cat/new.jpg"):
        build(tmp_path)


def test_classes_changed_after_the_split_are_an_error(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    Path(folder, "classnames.txt").write_text("Blue_Jay jay\ncat cat\ndog dog\nred_fox fox\n")
    with pytest.raises(
        ValueError,
        match="changed since the split file .*: label 0 'Blue Jay' is now 'jay', label 3 'red fox' is now 'fox'",
    ):
        build(tmp_path)


def test_pre_split_classes_renamed_after_few_shot_sampling_are_an_error(tmp_path):
    folder = make_pre_split(tmp_path, "mine", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    build(tmp_path, shots=1)
    Path(folder, "classnames.txt").write_text("a apple\nb banana\n")
    with pytest.raises(ValueError, match=f"changed since it was written: move {folder}/split_fewshot away"):
        build(tmp_path, shots=1)


def test_a_new_split_refuses_few_shot_samples_of_an_earlier_one(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    build(tmp_path, shots=1)
    os.remove(os.path.join(folder, SPLIT_FILE))
    with pytest.raises(
        FileExistsError, match="split_fewshot holds few-shot samples drawn from an earlier split"
    ):
        build(tmp_path, create_split=True)
    assert not os.path.exists(os.path.join(folder, SPLIT_FILE))


def test_non_images_are_left_out_and_named(tmp_path, capsys):
    folder = make_pool(tmp_path, "mine", CLASSES)
    Path(folder, "cat", "notes.txt").write_text("not an image")
    Path(folder, "README.md").write_text("my dataset")
    ds = build(tmp_path, create_split=True)
    assert f"left out: {os.path.join(folder, 'cat', 'notes.txt')}" in capsys.readouterr().out
    assert sum(per_class(ds.train_x + ds.val + ds.test).values()) == sum(CLASSES.values())


def test_images_outside_class_folders_are_an_error(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    Path(folder, "stray.jpg").write_bytes(Path(folder, "cat", "000.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"belong to no class \(stray.jpg\)"):
        build(tmp_path, create_split=True)


# ---- class names ------------------------------------------------------------------------


def test_classnames_file_names_the_classes(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    Path(folder, "classnames.txt").write_text(
        "red_fox  Red fox (Vulpes vulpes)\n\ncat\thouse cat\ndog dog\nBlue_Jay blue jay\n", encoding="utf-8"
    )
    ds = build(tmp_path, create_split=True)
    assert ds.classnames == ["blue jay", "house cat", "dog", "Red fox (Vulpes vulpes)"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Blue_Jay jay\ncat cat\ndog dog\nred_fox\n", "line 4: 'red_fox' is not '<folder> <class name>'"),
        ("Blue_Jay jay\ncat cat\ndog dog\n", "no line for the class folders red_fox"),
        (
            "Blue_Jay jay\ncat cat\ndog dog\nred_fox fox\nowl owl\n",
            "it lists owl, which are not class folders",
        ),
        ("Blue_Jay jay\ncat cat\ncat kitty\ndog dog\nred_fox fox\n", "line 3: folder 'cat' is listed twice"),
        ("Blue_Jay bird\ncat pet\ndog pet\nred_fox fox\n", "['cat', 'dog'] -> 'pet'"),
    ],
)
def test_bad_classnames_file_is_an_error_that_names_it(tmp_path, content, message):
    folder = make_pool(tmp_path, "mine", CLASSES)
    Path(folder, "classnames.txt").write_text(content)
    with pytest.raises(ValueError) as err:
        build(tmp_path, create_split=True)
    assert message in str(err.value) and os.path.join(folder, "classnames.txt") in str(err.value)


def test_unreadable_classnames_file_is_an_error_that_names_it(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    Path(folder, "classnames.txt").write_bytes(b"cat \xff\xfe\n")
    with pytest.raises(ValueError, match=f"Cannot read the class-name file {folder}/classnames.txt"):
        build(tmp_path, create_split=True)


def test_folder_names_that_clean_to_one_name_are_an_error(tmp_path):
    make_pool(tmp_path, "mine", {"sea_lion": 3, "sea lion": 3})
    with pytest.raises(
        ValueError, match=r"give the same class name: \['sea lion', 'sea_lion'\] -> 'sea lion'"
    ):
        build(tmp_path, create_split=True)


# ---- pre-split folders ------------------------------------------------------------------


def test_pre_split_layout(tmp_path):
    make_pre_split(
        tmp_path,
        "mine",
        {"train": {"b_b": 3, "a": 4}, "val": {"b_b": 1, "a": 1}, "test": {"b_b": 2, "a": 2}},
    )
    ds = build(tmp_path, create_split=True)
    assert ds.classnames == ["a", "b b"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (7, 2, 4)
    assert all(f"{os.sep}test{os.sep}" in d.impath for d in ds.test)
    assert not os.path.exists(tmp_path / "mine" / SPLIT_FILE)  # nothing to create
    few = build(tmp_path, shots=2, subsample="new")
    assert per_class(few.train_x) == {"b b": 2} and [d.label for d in few.test] == [0, 0]


def test_pre_split_without_val_has_no_validation_set(tmp_path):
    make_pre_split(tmp_path, "mine", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    ds = build(tmp_path)
    assert ds.val == [] and len(ds.train_x) == 6
    assert build(tmp_path, shots=1).val == []
    for key, value in (("FINAL_MODEL", "best_val"), ("SPLIT", "val")):
        with pytest.raises(ValueError, match="has no val/ folder, so there is no validation set"):
            build(tmp_path, **{key: value})


def test_pre_split_class_without_images_in_a_split_is_named(tmp_path):
    counts = {"train": {"a": 3, "b": 3, "c": 0}, "val": {"a": 1}, "test": {"a": 1, "b": 2, "c": 1}}
    make_pre_split(tmp_path, "mine", counts)
    with pytest.raises(ValueError) as err:
        build(tmp_path)
    assert "too few for: b (train 3, val 0, test 2), c (train 0, val 0, test 1)." in str(err.value)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"train": {"a": 3}, "test": {"a": 1, "z": 1}}, "has class folders that train/ lacks: z"),
        ({"train": {"a": 3}}, "has train/ but a pre-split layout needs train/ and test/"),
        ({"train": {"a": 3}, "test": {"a": 1}, "extra": {"a": 1}}, "also holds extra"),
    ],
)
def test_bad_pre_split_layout_is_an_error(tmp_path, counts, message):
    make_pre_split(tmp_path, "mine", counts)
    with pytest.raises(ValueError, match=message):
        build(tmp_path)


# ---- config ------------------------------------------------------------------------------


def test_folder_key_must_be_set(tmp_path):
    make_pool(tmp_path, "mine", CLASSES)
    with pytest.raises(
        ValueError, match="DATASET.IMAGE_FOLDER.DIR is not set: copy configs/datasets/image_folder.yaml"
    ):
        build(tmp_path, folder="")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Dataset folder {tmp_path}/nosuch not found"):
        build(tmp_path, folder="nosuch")


def test_user_config_copy(tmp_path):
    """configs/datasets/image_folder.yaml copied and edited: the folder, and prompts overridden."""
    make_pool(tmp_path, "birds", CLASSES)
    path = user_config(
        tmp_path / "birds.yaml",
        "birds",
        create_split=True,
        prompts={"TEMPLATE": '"a photo of a {}, a type of bird."'},
    )
    cfg = trainers.make_cfg("KgCoOp", path, root=str(tmp_path))
    assert (cfg.DATASET.NAME, cfg.DATASET.IMAGE_FOLDER.DIR, cfg.DATASET.CREATE_SPLIT) == (
        "ImageFolder",
        "birds",
        True,
    )
    assert cfg.DATASET.PROMPTS.TEMPLATE == "a photo of a {}, a type of bird."
    assert len(cfg.DATASET.PROMPTS.EXPERT_GROUPS) == 4  # the other keys keep the generic sets
    assert build_dataset(cfg).classnames == ["Blue Jay", "cat", "dog", "red fox"]


def test_default_prompts_are_the_generic_sets():
    """The sets the methods use for datasets without specific prompts (SUN397: MoCoOp's generic
    expert groups, docs/MOCOOP.md; MoPD's generic teacher pool, docs/MOPD.md)."""

    def prompts(stem):
        with open(os.path.join(ROOT, "configs", "datasets", f"{stem}.yaml")) as f:
            return yaml.safe_load(f)["DATASET"]["PROMPTS"]

    assert prompts("image_folder") == prompts("sun397")
    cfg = trainers.make_cfg("MoPD", "configs/datasets/image_folder.yaml")
    assert cfg.DATASET.PROMPTS.KNOWLEDGE_TEMPLATE == ""  # KgCoOp uses TEMPLATE
