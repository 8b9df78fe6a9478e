"""tools.protocols: the dataset lists agree with the configs, and the trainer-config lookup the
scripts and the benchmark use (function and command line)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tools import protocols


def test_every_dataset_has_its_config():
    assert len(set(protocols.ALL)) == 15
    assert set(protocols.BENCHMARK) | set(protocols.DG_TARGETS) == set(protocols.ALL)
    for d in protocols.DATASETS:
        config = yaml.safe_load(Path(ROOT, "configs", "datasets", f"{d.config}.yaml").read_text())
        assert config["DATASET"]["NAME"] == d.registered, d.config


def test_tools_import_no_dassl_or_torch():
    code = (
        "import sys, tools.protocols, tools.results.report; "
        "print(sorted(m for m in ('dassl', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def configs(tmp_path):
    for path in ("configs/trainers/T/shared.yaml", "configs/trainers/T/shared/eurosat.yaml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    return tmp_path


def test_trainer_config_prefers_the_per_dataset_file(configs):
    assert (
        protocols.trainer_config("T", "shared", "eurosat", configs)
        == "configs/trainers/T/shared/eurosat.yaml"
    )
    assert protocols.trainer_config("T", "shared", "dtd", configs) == "configs/trainers/T/shared.yaml"
    with pytest.raises(FileNotFoundError) as err:
        protocols.trainer_config("T", "other", "dtd", configs)
    assert str(err.value) == (
        "no trainer config for T/other: neither configs/trainers/T/other/dtd.yaml nor "
        "configs/trainers/T/other.yaml exists"
    )


def test_trainer_config_of_the_repository():
    assert protocols.trainer_config("MoCoOp", "paper_vit_b16_ep25", "imagenet", ROOT) == (
        "configs/trainers/MoCoOp/paper_vit_b16_ep25/imagenet.yaml"
    )
    assert protocols.trainer_config("CoOp", "vit_b16_ep50", "imagenet", ROOT) == (
        "configs/trainers/CoOp/vit_b16_ep50.yaml"
    )


def lookup(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "tools.protocols", "trainer-config", *args],
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        check=False,
    )


def test_command_line(configs):
    proc = lookup(configs, "T", "shared", "eurosat", "dtd")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        "configs/trainers/T/shared/eurosat.yaml\nconfigs/trainers/T/shared.yaml\n",
        "",
    )
    proc = lookup(configs, "T", "other", "dtd")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1,
        "",
        (
            "error: no trainer config for T/other: neither configs/trainers/T/other/dtd.yaml nor "
            "configs/trainers/T/other.yaml exists\n"
        ),
    )
