"""Config files and values that cannot define a run: one clear error when the config is made
(train.py makes it before anything is written), naming the file or the key."""

import re

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers

PETS = "configs/datasets/oxford_pets.yaml"
COOP = "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", r"is empty: a config file is a mapping of keys"),
        ("# only a comment\n", r"is empty: a config file is a mapping of keys"),
        ("Train CoOp on pets for 50 epochs.\n", r"holds a str, not a mapping of keys"),
        ("- OPTIM.LR\n- 0.1\n", r"holds a list, not a mapping of keys"),
        ("OPTIM: [1, 2\n", r"is not valid YAML"),
    ],
)
def test_config_file_that_is_not_a_mapping_is_one_error_naming_it(tmp_path, text, expected):
    path = tmp_path / "my_config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"Config file {path} ") + expected):
        trainers.make_cfg("CoOp", PETS, str(path))


def test_a_base_that_is_not_a_mapping_is_named(tmp_path):
    (tmp_path / "base.yaml").write_text("")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nOPTIM:\n  LR: 0.1\n")
    with pytest.raises(ValueError, match=re.escape(f"Config file {tmp_path / 'base.yaml'} is empty")):
        trainers.make_cfg("CoOp", PETS, str(child))
