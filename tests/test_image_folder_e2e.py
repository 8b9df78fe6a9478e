"""Your own dataset end to end: every trainer through train.py, and the protocol scripts
(base2new, fewshot, xd with the dataset as target) then tools.results, on generated folders with
the tiny CLIP. The scripts take a dataset config's stem as the dataset's name, so they run in a
scratch repository that links this one and adds the user's config next to the others."""

import ast
import os
import re
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.conftest import ROOT
from tests.dataset_layouts import make_imagenet
from tests.e2e import TINY_OPTS, randomise_images, read_log, result_accuracy, run_train
from tests.image_folders import make_pool, make_pre_split, user_config

pytestmark = pytest.mark.e2e

# The two lower-case folders are the base classes, the rest new (sorted folder names).
POOL = {"kingfisher": 6, "robin": 6, "sparrow": 6, "wren": 6}
PRE_SPLIT = {
    "train": dict.fromkeys(("barn_owl", "eagle", "heron", "swan"), 4),
    "val": dict.fromkeys(("barn_owl", "eagle", "heron", "swan"), 1),
    "test": dict.fromkeys(("barn_owl", "eagle", "heron", "swan"), 2),
}
# MoCoOp experts overridden in the user's config: context before and after the class name.
EXPERTS = {
    "EXPERT_GROUPS": "[1, 2]",
    "EXPERT_TEMPLATES": '["a photo of a {}, a type of bird.", "itap of a {}.", "a photo of the {}."]',
}
TRAINER_RUNS = {
    "CoCoOp": "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
    "KgCoOp": "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml",
    "MoCoOp": "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml",
    # No per-dataset file for a user's dataset: the shared MoPD config, as the scripts pick it.
    "MoPD": "configs/trainers/MoPD/vit_b16_c4_bs128.yaml",
    "ZeroshotCLIP": "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
}


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    """DATASET.ROOT with a pre-split folder `birds/` (with val/) and its user config."""
    root = tmp_path_factory.mktemp("birds")
    make_pre_split(str(root), "birds", PRE_SPLIT)
    return str(root), user_config(root / "birds.yaml", "birds", prompts=EXPERTS)


@pytest.mark.parametrize("trainer", list(TRAINER_RUNS))
def test_every_trainer_on_a_pre_split_folder(trainer, birds, tiny_clip_path, tmp_path):
    root, config = birds
    out = str(tmp_path / "run")
    args = ["--seed", 1, "--trainer", trainer, "--config-file", TRAINER_RUNS[trainer], "--root", root]
    args += ["--dataset-config-file", config, "--output-dir", out, "MODEL.BACKBONE.NAME", tiny_clip_path]
    args += [*TINY_OPTS, "DATASET.NUM_SHOTS", 4, "OPTIM.MAX_EPOCH", 1, "DATASET.SUBSAMPLE_CLASSES", "base"]
    run_train(*args, *(["--eval-only"] if trainer == "ZeroshotCLIP" else []))
    log = read_log(out)
    assert "Loading dataset: ImageFolder" in log
    assert "=> result\n* total: 4\n" in log  # 2 base classes (barn owl, eagle) x 2 test images
    result_accuracy(log)
    if trainer == "MoCoOp":
        assert "MoCoOp: 2 experts" in log
    if trainer == "MoPD":
        assert "Teacher pool 'task': 12 templates" in log


def tiny_tree(clip_path):
    """The tiny settings of tests.e2e.TINY_OPTS (and 1 epoch) as a config-file key tree."""
    tree = {}
    pairs = [*TINY_OPTS, "MODEL.BACKBONE.NAME", clip_path, "OPTIM.MAX_EPOCH", "1"]
    for key, text in zip(pairs[::2], pairs[1::2]):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *path, last = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[last] = list(value) if isinstance(value, tuple) else value
    return tree


def scratch_repo(path, clip_path, user_configs):
    """A repository linking this one's code, with the user's dataset configs added and a
    `tiny` CoOp config (the base-to-new CoOp config with the tiny settings)."""
    path.mkdir()
    for name in ("train.py", "trainers", "datasets", "clipprompt", "tools", "scripts"):
        (path / name).symlink_to(os.path.join(ROOT, name))
    dataset_dir = path / "configs" / "datasets"
    dataset_dir.mkdir(parents=True)
    for name in os.listdir(os.path.join(ROOT, "configs", "datasets")):
        (dataset_dir / name).symlink_to(os.path.join(ROOT, "configs", "datasets", name))
    for stem, make in user_configs.items():
        make(dataset_dir / f"{stem}.yaml")
    trainer_dir = path / "configs" / "trainers" / "CoOp"
    trainer_dir.mkdir(parents=True)
    tree = {
        "_BASE_": os.path.join(ROOT, "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"),
        **tiny_tree(clip_path),
    }
    (trainer_dir / "tiny.yaml").write_text(yaml.safe_dump(tree))
    return path


def script(repo, data, *args, **env):
    """bash <args> in `repo` for seed 1, 2 shots (few-shot: 1), outputs in repo/output."""
    env = {
        **os.environ,
        "DATA": data,
        "OUTPUT": "output",
        "SEEDS": "1",
        "SHOTS": "2",
        "SHOTS_LIST": "1",
    } | env
    env |= {"PYTHON": sys.executable, "DRY_RUN": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        ["bash", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_protocol_scripts_on_your_own_dataset(tmp_path, tiny_clip_path):
    """The README path: a pool of class folders, a copy of image_folder.yaml with the folder
    and CREATE_SPLIT set, base2new / fewshot / xd, then the table."""
    data = tmp_path / "data"
    pool = make_pool(str(data), "mybirds", POOL)
    randomise_images(make_imagenet(str(data), num_classes=4, per_class=(4, 2)).dataset_dir)
    repo = scratch_repo(
        tmp_path / "repo",
        tiny_clip_path,
        {
            "mybirds": lambda p: user_config(p, "mybirds", create_split=True),
            "mybirds_nosplit": lambda p: user_config(p, "mybirds"),
        },
    )
    # Without CREATE_SPLIT, a pool without a split file is refused and nothing is made.
    refused = run_train(
        "--trainer", "CoOp", "--root", data, "--dataset-config-file", repo / "configs/datasets/mybirds_nosplit.yaml",
        "--config-file", repo / "configs/trainers/CoOp/tiny.yaml", "--output-dir", tmp_path / "refused",
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"Split file {pool}/split_zhou_ImageFolder.json not found" in refused.stderr
    assert "set DATASET.CREATE_SPLIT True" in refused.stderr
    assert not os.path.exists(os.path.join(pool, "split_zhou_ImageFolder.json"))

    script(repo, str(data), "scripts/base2new.sh", "mybirds", "CoOp", "tiny")
    script(repo, str(data), "scripts/fewshot.sh", "mybirds", "CoOp", "tiny")
    script(repo, str(data), "scripts/xd.sh", "CoOp", "tiny", TARGETS="mybirds")

    output = repo / "output"
    logs = {
        "base": output / "base2new/train_base/mybirds/shots_2/CoOp/tiny/seed1",
        "new": output / "base2new/test_new/mybirds/shots_2/CoOp/tiny/seed1",
        "fewshot": output / "fewshot/mybirds/shots_1/CoOp/tiny/seed1",
        "xd": output / "xd/test/mybirds/shots_2/CoOp/tiny/seed1",
    }
    created = [name for name, run in logs.items() if "Created a new random split" in read_log(run)]
    assert created == ["base"]  # made by the first run, read by every later one
    totals = {name: re.findall(r"\* total: (\d+)", read_log(run))[-1] for name, run in logs.items()}
    # 30 % of 6 images per class are test images: 2 base or new classes, or all 4.
    assert totals == {"base": "4", "new": "4", "fewshot": "8", "xd": "8"}

    table = subprocess.run(
        [sys.executable, "-m", "tools.results", str(output), "--seeds", "1", "--datasets", "mybirds"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    acc = {name: result_accuracy(read_log(run)) for name, run in logs.items()}
    rows = markdown_rows(table)
    base2new, fewshot = [row for row in rows if row[0] == "mybirds"]
    assert [float(c) for c in base2new[2:4]] == pytest.approx([acc["base"], acc["new"]], abs=0.05)
    assert float(fewshot[1]) == pytest.approx(acc["fewshot"], abs=0.05)
    header = next(row for row in rows if row[0] == "Method" and "mybirds" in row)
    xd = rows[rows.index(header) + 2]  # after the separator line
    assert xd[0] == "CoOp / tiny" and float(xd[header.index("mybirds")]) == pytest.approx(acc["xd"], abs=0.05)


def markdown_rows(text):
    """The cells of every Markdown table line of `text`."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_scripts_pick_the_shared_mopd_config_for_your_dataset():
    proc = subprocess.run(
        ["bash", "scripts/base2new.sh", "image_folder", "MoPD", "vit_b16_c4_bs128"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "DATA": "/data", "DRY_RUN": "1", "SEEDS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert all("--config-file configs/trainers/MoPD/vit_b16_c4_bs128.yaml " in line for line in lines)
