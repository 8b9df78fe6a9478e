"""predict.py's inputs: a folder gives every image below it, through symlinked sub-folders as a
`**` pattern does, each image once even where links loop back to a folder above them."""

import os

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from predict import expand_inputs


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb"):
        pass


def test_folder_inputs_follow_symlinked_folders_without_looping(tmp_path, capsys):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    for path in (
        photos / "a.jpg",
        photos / "sub" / "b.png",
        elsewhere / "c.jpg",
        elsewhere / "deep" / "d.jpg",
    ):
        touch(path)
    os.symlink(elsewhere, photos / "linked")  # a folder of images kept on another disk
    os.symlink("..", photos / "sub" / "up")  # a loop: back to photos/
    os.symlink(tmp_path / "gone", photos / "dangling.jpg")  # an image that is not there: kept, to be named
    found = [path for path, _ in expand_inputs([str(photos)])]
    assert found == [
        str(photos / "a.jpg"),
        str(photos / "dangling.jpg"),
        str(photos / "linked" / "c.jpg"),
        str(photos / "linked" / "deep" / "d.jpg"),
        str(photos / "sub" / "b.png"),
    ]
    assert (
        f"not followed (it leads back to a folder above it): {photos / 'sub' / 'up'}"
        in capsys.readouterr().out
    )
