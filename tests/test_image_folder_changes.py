"""An ImageFolder changed after its split (or its few-shot samples) was made is one error for
every change: class folders added (even without images) or removed, images added or removed,
and images in sub-folders of a class folder, which are never part of the dataset."""

import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.image_folders import make_pool, make_pre_split
from tests.test_image_folder import CLASSES, build

NEW_SPLIT = (
    "move {folder}/split_zhou_ImageFolder.json and split_fewshot/ away and set DATASET.CREATE_SPLIT True"
)


@pytest.mark.parametrize("new_folder", ["zz_new", "aa_new"])
def test_a_class_folder_added_after_the_split_is_an_error_even_without_images(tmp_path, new_folder):
    folder = make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    os.makedirs(os.path.join(folder, new_folder))
    Path(folder, new_folder, ".DS_Store").write_bytes(b"\0")  # hidden: no image
    with pytest.raises(ValueError) as err:
        build(tmp_path)
    message = str(err.value)
    assert message.startswith(
        f"The classes of {folder} changed since the split file {folder}/split_zhou_ImageFolder.json was made "
        f"(4 classes there, 5 now): added {new_folder.replace('_', ' ')!r}."
    )
    assert NEW_SPLIT.format(folder=folder) in message


def test_a_class_folder_removed_after_the_split_is_an_error(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    shutil.rmtree(os.path.join(folder, "dog"))
    with pytest.raises(ValueError, match=re.escape("(4 classes there, 3 now): removed 'dog'.")):
        build(tmp_path)


def test_an_image_removed_after_the_split_says_what_to_do(tmp_path):
    folder = make_pool(tmp_path, "mine", CLASSES)
    build(tmp_path, create_split=True)
    os.remove(os.path.join(folder, "cat", "001.jpg"))
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path)
    assert f"Image {folder}/cat/001.jpg listed in split file" in str(err.value)
    assert NEW_SPLIT.format(folder=folder) in str(err.value)


def test_images_in_sub_folders_of_a_class_are_named_in_an_error(tmp_path, capsys):
    folder = make_pool(tmp_path, "mine", CLASSES)
    os.makedirs(os.path.join(folder, "cat", "notes"))
    Path(folder, "cat", "notes", "readme.txt").write_text("no image here")  # left out, and said
    build(tmp_path, create_split=True)
    assert f"{folder}/cat/notes/" in capsys.readouterr().out
    nested = Path(folder, "dog", "2024", "trip")
    os.makedirs(nested)
    shutil.copy(Path(folder, "dog", "000.jpg"), nested / "extra.jpg")
    for kwargs in ({}, {"create_split": True}):  # added after the split; or when it is made
        if kwargs:
            os.remove(os.path.join(folder, "split_zhou_ImageFolder.json"))
        with pytest.raises(ValueError) as err:
            build(tmp_path, **kwargs)
        assert str(err.value).startswith(
            f"Images in sub-folders of the class folder {folder}/dog are not part of the dataset: "
            f"{folder}/dog/2024/trip/extra.jpg. Move them into {folder}/dog itself"
        )


def test_pre_split_class_added_after_few_shot_sampling_is_an_error(tmp_path):
    folder = make_pre_split(tmp_path, "mine", {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    build(tmp_path, shots=1)
    make_pre_split(tmp_path, "mine", {"train": {"c": 3}, "test": {"c": 1}}, seed=1)
    with pytest.raises(ValueError) as err:
        build(tmp_path, shots=1)
    assert str(err.value).startswith(
        f"The few-shot sample {folder}/split_fewshot/shot_1-seed_1.json has no training image of the class 'c'"
    )
    assert f"Move {folder}/split_fewshot away to draw new samples" in str(err.value)
