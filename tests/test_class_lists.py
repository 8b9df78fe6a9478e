"""Class lists saved as UTF-8 with a byte-order mark (as Windows Notepad and Excel save them)
read as the same list without it, wherever class lists are read."""

import codecs

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from dassl.data.datasets import build_dataset

from datasets.coop_dataset import read_lines
from tests.image_folders import make_pool
from tests.test_image_folder import make_cfg
from tools.benchmark.build import read_classnames as benchmark_classnames
from tools.export.run import read_classnames_file as run_classnames

BOM = codecs.BOM_UTF8


def with_and_without_bom(tmp_path, text):
    paths = []
    for name, prefix in (("plain.txt", b""), ("bom.txt", BOM)):
        path = tmp_path / name
        path.write_bytes(prefix + text.encode("utf-8"))
        paths.append(str(path))
    return paths


def test_image_folder_classnames_file_with_a_bom(tmp_path):
    folder = make_pool(tmp_path, "mine", {"Forest": 3, "river": 3})
    (tmp_path / "mine" / "classnames.txt").write_bytes(BOM + "Forest Wäldchen\nriver Fluss\n".encode())
    dataset = build_dataset(make_cfg(tmp_path, create_split=True))
    assert dataset.classnames == ["Wäldchen", "Fluss"], folder


@pytest.mark.parametrize(
    "read, text, expected",
    [
        (run_classnames, "Forest\nriver\n", ["Forest", "river"]),  # predict.py / tools.export --classnames
        (benchmark_classnames, "Forest\nriver\n", ["Forest", "river"]),  # tools.benchmark --classnames-file
        # ImageNet's classnames.txt and every annotation list of the CoOp datasets.
        (
            lambda path: read_lines(path, "Class-name file", ""),
            "n01 Forest\nn02 river\n",
            ["n01 Forest", "n02 river"],
        ),
    ],
)
def test_class_list_readers_ignore_a_bom(tmp_path, read, text, expected):
    plain, bom = with_and_without_bom(tmp_path, text)
    assert read(plain) == read(bom) == expected
