"""tools.protocols: the dataset lists agree with the configs, and the trainer-config lookup the
scripts and the benchmark use (function and command line)."""

import os
import shlex
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


@pytest.mark.e2e
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


def grid_paths(runs):
    return [(r.path, r.after) for r in runs]


def test_plan_base2new_evaluations_wait_for_their_training():
    grid = protocols.Grid("CoOp", "vit_b16_ctxv1", "/data", "out", ROOT)
    runs = protocols.plan("base2new", grid, ["dtd", "imagenet"], [1, 2], [16])
    base = "base2new/train_base/{}/shots_16/CoOp/vit_b16_ctxv1/seed{}"
    assert grid_paths(runs) == [
        (path, after)
        for d in ("dtd", "imagenet")
        for s in (1, 2)
        for path, after in (
            (base.format(d, s), None),
            (base.format(d, s).replace("train_base", "test_new"), base.format(d, s)),
        )
    ]
    train, new = runs[:2]
    assert train.trains and not new.trains
    assert new.args[new.args.index("--model-dir") + 1] == f"out/{train.path}"
    assert new.args[-4:] == ("DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "new")
    # ImageNet's runs use CoOp's per-dataset file (50 epochs)
    assert (
        runs[4].args[runs[4].args.index("--config-file") + 1]
        == "configs/trainers/CoOp/vit_b16_ctxv1/imagenet.yaml"
    )


def test_plan_zero_shot_and_xd():
    # Every trainer has the same plan: a model with nothing to learn "trains" by evaluating.
    zs = protocols.plan(
        "base2new", protocols.Grid("ZeroshotCLIP", "vit_b16", "d", "o", ROOT), ["dtd"], [1], [16]
    )
    train = "base2new/train_base/dtd/shots_16/ZeroshotCLIP/vit_b16/seed1"
    assert [r.after for r in zs] == [None, train]
    evaluation = zs[1].args[zs[1].args.index("--model-dir") :][:3]
    assert "--eval-only" not in zs[0].args and evaluation == ("--model-dir", f"o/{train}", "--eval-only")
    xd = protocols.plan(
        "xd", protocols.Grid("MoCoOp", "paper_vit_b16_ep25", "d", "o", ROOT), ["dtd", "imagenet_a"], [3], [16]
    )
    train = "xd/train/imagenet/shots_16/MoCoOp/paper_vit_b16_ep25/seed3"
    assert grid_paths(xd) == [(train, None)] + [
        (f"xd/test/{t}/shots_16/MoCoOp/paper_vit_b16_ep25/seed3", train) for t in ("dtd", "imagenet_a")
    ]
    for run in xd:  # every target with the source's config and prompts
        assert "configs/trainers/MoCoOp/paper_vit_b16_ep25/imagenet.yaml" in run.args
    assert xd[1].args[-2:] == ("DATASET.SOURCE_CONFIG", "configs/datasets/imagenet.yaml")
    few = protocols.plan(
        "fewshot", protocols.Grid("CoOp", "vit_b16_ep50", "d", "o", ROOT), ["dtd"], [1], [1, 4]
    )
    assert [r.path for r in few] == [f"fewshot/dtd/shots_{k}/CoOp/vit_b16_ep50/seed1" for k in (1, 4)]


def test_plan_checks_every_dataset_before_any_trainer_config(configs):
    (configs / "configs/datasets").mkdir(parents=True)
    (configs / "configs/datasets/dtd.yaml").write_text("")
    grid = protocols.Grid("T", "missing", "d", "o", configs)
    with pytest.raises(FileNotFoundError, match="unknown dataset 'eurosat': configs/datasets/eurosat.yaml"):
        protocols.plan("base2new", grid, ["dtd", "eurosat"], [1], [16])
    with pytest.raises(FileNotFoundError, match="neither configs/trainers/T/missing/dtd.yaml nor"):
        protocols.plan("fewshot", grid, ["dtd"], [1], [16])


@pytest.mark.e2e
def test_plan_command_line(configs):
    (configs / "configs/datasets").mkdir(parents=True)
    (configs / "configs/datasets/dtd.yaml").write_text("")
    cmd = [
        "plan",
        "base2new",
        "T",
        "shared",
        "--data",
        "my data",
        "--output",
        "o",
        "--seeds",
        "1",
        "--shots",
        "2",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.protocols", *cmd, "--datasets", "dtd"],
        cwd=configs,
        env=os.environ | {"PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        check=True,
    )
    train, new = (shlex.split(line) for line in proc.stdout.splitlines())
    assert train[:4] == ["o/base2new/train_base/dtd/shots_2/T/shared/seed1", "", "--root", "my data"]
    assert new[:2] == ["o/base2new/test_new/dtd/shots_2/T/shared/seed1", train[0]]
    assert new[-5:] == ["--eval-only", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "new"]
