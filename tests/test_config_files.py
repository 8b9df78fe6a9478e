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
        ("_BASE_: 5\nOPTIM:\n  LR: 0.1\n", r"has _BASE_: 5, not a file name or a list of file names"),
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


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("OPTIM.MAX_EPOCH", "0", "OPTIM.MAX_EPOCH must be at least 1 (training epochs), not 0"),
        ("OPTIM.MAX_EPOCH", "-3", "OPTIM.MAX_EPOCH must be at least 1 (training epochs), not -3"),
        ("OPTIM.LR", "0.0", "OPTIM.LR must be positive, not 0.0"),
        ("OPTIM.LR", "-0.002", "OPTIM.LR must be positive, not -0.002"),
        ("OPTIM.NAME", "'sgdd'", "OPTIM.NAME 'sgdd' is not an optimiser Dassl builds: use one of adam,"),
        ("OPTIM.LR_SCHEDULER", "'cosin'", "OPTIM.LR_SCHEDULER 'cosin' is not supported: use one of cosine,"),
        (
            "OPTIM.WARMUP_EPOCH",
            "-2",
            "OPTIM.WARMUP_EPOCH must be 0 or more (0 and Dassl's default -1: no warm-up), not -2",
        ),
        ("OPTIM.WARMUP_TYPE", "'linearr'", "OPTIM.WARMUP_TYPE must be constant or linear, not 'linearr'"),
        ("OPTIM.WARMUP_CONS_LR", "0.0", "OPTIM.WARMUP_CONS_LR must be positive"),
        ("OPTIM.WEIGHT_DECAY", "-0.0005", "OPTIM.WEIGHT_DECAY must be 0 or more, not -0.0005"),
        ("OPTIM.MOMENTUM", "-0.9", "OPTIM.MOMENTUM must be 0 or more, not -0.9"),
        ("OPTIM.GAMMA", "0.0", "OPTIM.GAMMA must be positive"),
        ("DATALOADER.TRAIN_X.BATCH_SIZE", "0", "DATALOADER.TRAIN_X.BATCH_SIZE must be at least 1, not 0"),
        ("DATALOADER.TEST.BATCH_SIZE", "-8", "DATALOADER.TEST.BATCH_SIZE must be at least 1, not -8"),
        ("DATALOADER.NUM_WORKERS", "-1", "DATALOADER.NUM_WORKERS must be 0 or more, not -1"),
        (
            "TRAINER.GRAD_CLIP_NORM",
            "-1.0",
            "TRAINER.GRAD_CLIP_NORM must be 0 (no clipping) or more, not -1.0",
        ),
    ],
)
def test_invalid_training_values_are_one_error_when_the_config_is_made(key, value, expected):
    opts = [key, value]
    if key == "OPTIM.WARMUP_TYPE" or key == "OPTIM.WARMUP_CONS_LR":
        opts += ["OPTIM.WARMUP_EPOCH", "1"]
    if key == "OPTIM.GAMMA":
        opts += ["OPTIM.LR_SCHEDULER", "single_step"]
    with pytest.raises(ValueError, match=re.escape(expected)):
        trainers.make_cfg("CoOp", PETS, COOP, opts)


@pytest.mark.e2e
def test_train_py_refuses_max_epoch_zero_before_writing_anything(tmp_path):
    import train

    out = tmp_path / "run"
    argv = ["train.py", "--trainer", "CoOp", "--dataset-config-file", PETS, "--config-file", COOP]
    argv += ["--root", str(tmp_path), "--output-dir", str(out), "OPTIM.MAX_EPOCH", "0"]
    with pytest.raises(ValueError, match=r"OPTIM.MAX_EPOCH must be at least 1"):
        train.main(argv)
    assert not out.exists()
