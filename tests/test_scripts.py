"""The protocol scripts in a scratch repository: scripts/ copied next to configs and
a stand-in train.py, so no Dassl, data or model is needed. DRY_RUN=1 runs must
print exactly the train.py commands; real runs use the stand-in, which records its
arguments and writes a Dassl-format log (and a checkpoint when it trains)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.protocols import ALL, BENCHMARK, DG_TARGETS, XD_SOURCE, XD_TARGETS
from tools.results.report import build_report
from tools.results.synthetic import write_log

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TOOLS = SCRIPTS.parent / "tools"
TRAINER_CONFIGS = (
    "CoOp/vit_b16.yaml",
    "ZeroshotCLIP/vit_b16.yaml",
    "MoCoOp/c4.yaml",
    "MoCoOp/c4/eurosat.yaml",  # per-dataset settings for eurosat ...
    "MoCoOp/c4/imagenet.yaml",  # ... and for imagenet, the cross-dataset source
)
FAKE_TRAIN = """\
import os, sys
from pathlib import Path

args = sys.argv[1:]
with open("calls.txt", "a") as f:
    f.write(" ".join(args) + "\\n")
out = Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
if "--eval-only" not in args and os.environ.get("FAKE_UNFINISHED"):
    (out / "log.txt").write_text("epoch [1/2] ...\\n")  # stopped without a result
    sys.exit(0)
if "--eval-only" not in args:
    (out / "prompt_learner").mkdir(exist_ok=True)
    (out / "prompt_learner" / "model.pth.tar-2").write_text("")
if "--model-dir" in args:
    assert list(Path(args[args.index("--model-dir") + 1]).glob("*/model.pth.tar-*")), "no model"
correct = 500 + 10 * int(args[args.index("--seed") + 1]) + (100 if "new" in args else 0)
(out / "log.txt").write_text(
    f"=> result\\n* total: 1,000\\n* correct: {correct}\\n* accuracy: {correct / 10:.1f}%\\n"
)
"""


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(SCRIPTS, root / "scripts")
    # The scripts ask tools.protocols for trainer configs and tools.results.runlog whether a
    # run is finished.
    shutil.copytree(TOOLS, root / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "train.py").write_text(FAKE_TRAIN)
    for d in ALL:
        (root / "configs/datasets").mkdir(parents=True, exist_ok=True)
        (root / f"configs/datasets/{d}.yaml").write_text("")
    for cfg in TRAINER_CONFIGS:
        (root / "configs/trainers" / cfg).parent.mkdir(parents=True, exist_ok=True)
        (root / "configs/trainers" / cfg).write_text("")
    (tmp_path / "data").mkdir()
    return root


def run(repo, script, *args, data="/data", **env):
    """bash scripts/<script> args, with a clean protocol environment plus `env`."""
    clean = {
        k: v for k, v in os.environ.items() if k not in {"OUTPUT", "SEEDS", "SHOTS", "SHOTS_LIST", "DATASETS"}
    }
    clean |= {"DRY_RUN": "1", "PYTHON": "python3", "DATA": data} | env
    if data is None:
        del clean["DATA"]
    return subprocess.run(
        ["bash", f"scripts/{script}", *args],
        check=False,
        cwd=repo,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def cmd(seed, dataset, cfg_file, out, *rest):
    return (
        f"python3 train.py --root /data --seed {seed} --trainer {cfg_file.split('/')[2]} "
        f"--dataset-config-file configs/datasets/{dataset}.yaml --config-file {cfg_file} --output-dir {out}"
        + "".join(f" {r}" for r in rest)
    )


COOP = "configs/trainers/CoOp/vit_b16.yaml"
B2N = "output/base2new/{}/{}/shots_16/{}/{}/seed{}"


def test_shell_dataset_lists_are_the_python_ones():
    echo = 'source scripts/_common.sh && printf "%s\\n" "$BENCHMARK_DATASETS" "$XD_SOURCE" "$XD_TARGETS" "$DG_TARGETS"'
    proc = subprocess.run(
        ["bash", "-c", echo], cwd=SCRIPTS.parent, capture_output=True, text=True, check=True
    )
    benchmark, source, xd_targets, dg_targets = (line.split() for line in proc.stdout.splitlines())
    assert (benchmark, source, xd_targets, dg_targets) == (BENCHMARK, [XD_SOURCE], XD_TARGETS, DG_TARGETS)


def test_base2new_dry_run(repo):
    base1, new1 = (
        B2N.format("train_base", "dtd", "CoOp", "vit_b16", 1),
        B2N.format("test_new", "dtd", "CoOp", "vit_b16", 1),
    )
    base2, new2 = (
        B2N.format("train_base", "dtd", "CoOp", "vit_b16", 2),
        B2N.format("test_new", "dtd", "CoOp", "vit_b16", 2),
    )
    assert lines(run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16", SEEDS="1 2")) == [
        cmd(1, "dtd", COOP, base1, "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base"),
        cmd(
            1,
            "dtd",
            COOP,
            new1,
            f"--model-dir {base1} --eval-only DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new",
        ),
        cmd(2, "dtd", COOP, base2, "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base"),
        cmd(
            2,
            "dtd",
            COOP,
            new2,
            f"--model-dir {base2} --eval-only DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new",
        ),
    ]
    assert not (repo / "calls.txt").exists() and not (repo / "output").exists()  # nothing ran


def test_base2new_env_and_default_seeds(repo):
    out = lines(run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16", OUTPUT="/runs/x", SHOTS="8"))
    assert [re.search(r"--seed (\d+)", line)[1] for line in out] == ["1", "1", "2", "2", "3", "3"]
    assert all("--output-dir /runs/x/base2new/" in line and "/shots_8/" in line for line in out)
    assert all("DATASET.NUM_SHOTS 8 " in line for line in out)


def test_skip_finished_resume_unfinished(repo):
    d = repo / "output/base2new"
    write_log(d / "train_base/dtd/shots_16/CoOp/vit_b16/seed1", correct=700)  # finished
    write_log(d / "test_new/dtd/shots_16/CoOp/vit_b16/seed1", correct=600)  # finished
    write_log(d / "train_base/dtd/shots_16/CoOp/vit_b16/seed2")  # interrupted
    # seed 3: finished once, but the newest log (a later start) has no result: unfinished,
    # the same rule as tools.results.
    write_log(d / "train_base/dtd/shots_16/CoOp/vit_b16/seed3", correct=700)
    write_log(d / "train_base/dtd/shots_16/CoOp/vit_b16/seed3", name="log.txt-2024-02-03-04-05-06")
    out = lines(run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16"))
    base = "output/base2new/train_base/dtd/shots_16/CoOp/vit_b16/seed"
    new = "output/base2new/test_new/dtd/shots_16/CoOp/vit_b16/seed"
    assert [line.split(" --root")[0] if line.startswith("python3") else line for line in out] == [
        f"# skip finished: {base}1",
        f"# skip finished: {new}1",
        f"# unfinished, train.py resumes it: {base}2",
        "python3 train.py",
        "python3 train.py",
        f"# unfinished, train.py resumes it: {base}3",
        "python3 train.py",
        "python3 train.py",
    ]
    assert f"--output-dir {base}2 DATASET" in out[3]  # the same directory: train.py resumes


def test_per_dataset_config(repo):
    eurosat = lines(run(repo, "base2new.sh", "eurosat", "MoCoOp", "c4", SEEDS="1"))
    dtd = lines(run(repo, "base2new.sh", "dtd", "MoCoOp", "c4", SEEDS="1"))
    assert all("--config-file configs/trainers/MoCoOp/c4/eurosat.yaml " in line for line in eurosat)
    assert all("--config-file configs/trainers/MoCoOp/c4.yaml " in line for line in dtd)
    assert all("/MoCoOp/c4/seed1" in line for line in eurosat + dtd)  # the path names the config only


def test_zeroshot_runs_as_every_trainer_does(repo):
    # Its "training" run evaluates (nothing to learn); the evaluations name it as their model.
    cfg = "configs/trainers/ZeroshotCLIP/vit_b16.yaml"
    b, n = (B2N.format(p, "dtd", "ZeroshotCLIP", "vit_b16", 1) for p in ("train_base", "test_new"))
    assert lines(run(repo, "base2new.sh", "dtd", "ZeroshotCLIP", "vit_b16", SEEDS="1")) == [
        cmd(1, "dtd", cfg, b, "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base"),
        cmd(
            1,
            "dtd",
            cfg,
            n,
            f"--model-dir {b} --eval-only DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new",
        ),
    ]
    out = lines(run(repo, "xd.sh", "ZeroshotCLIP", "vit_b16", SEEDS="1", TARGETS="dtd"))
    train = "output/xd/train/imagenet/shots_16/ZeroshotCLIP/vit_b16/seed1"
    assert out == [
        cmd(1, "imagenet", cfg, train) + " DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES all",
        cmd(
            1,
            "dtd",
            cfg,
            "output/xd/test/dtd/shots_16/ZeroshotCLIP/vit_b16/seed1",
            f"--model-dir {train} --eval-only",
        )
        + " DATASET.SOURCE_CONFIG configs/datasets/imagenet.yaml",
    ]


def test_fewshot_dry_run(repo):
    out = lines(run(repo, "fewshot.sh", "dtd", "CoOp", "vit_b16", SEEDS="1 2", SHOTS_LIST="1 4"))
    assert out == [
        cmd(s, "dtd", COOP, f"output/fewshot/dtd/shots_{k}/CoOp/vit_b16/seed{s}")
        + f" DATASET.NUM_SHOTS {k} DATASET.SUBSAMPLE_CLASSES all"
        for k in (1, 4)
        for s in (1, 2)
    ]
    assert len(lines(run(repo, "fewshot.sh", "dtd", "CoOp", "vit_b16"))) == 5 * 3  # default shots and seeds


def test_xd_dry_run(repo):
    out = lines(run(repo, "xd.sh", "MoCoOp", "c4", SEEDS="1"))
    train = "output/xd/train/imagenet/shots_16/MoCoOp/c4/seed1"
    cfg = "configs/trainers/MoCoOp/c4/imagenet.yaml"  # the source's config, for every target
    targets = XD_TARGETS + DG_TARGETS
    assert out == [
        cmd(1, "imagenet", cfg, train, "DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES all"),
        *(
            cmd(
                1,
                t,
                cfg,
                f"output/xd/test/{t}/shots_16/MoCoOp/c4/seed1",
                f"--model-dir {train} --eval-only DATASET.SOURCE_CONFIG configs/datasets/imagenet.yaml",
            )
            for t in targets
        ),
    ]


def test_all_datasets_drivers(repo):
    out = lines(run(repo, "all_base2new.sh", "CoOp", "vit_b16"))
    assert len(out) == 11 * 3 * 2
    order = list(
        dict.fromkeys(re.search(r"train_base/(\w+)/", line)[1] for line in out if "train_base/" in line)
    )
    assert order == BENCHMARK
    out = lines(
        run(repo, "all_fewshot.sh", "CoOp", "vit_b16", DATASETS="dtd eurosat", SEEDS="1", SHOTS_LIST="2")
    )
    assert out == [
        cmd(1, d, COOP, f"output/fewshot/{d}/shots_2/CoOp/vit_b16/seed1")
        + " DATASET.NUM_SHOTS 2 DATASET.SUBSAMPLE_CLASSES all"
        for d in ("dtd", "eurosat")
    ]
    # Every dataset's configs are checked before anything runs.
    proc = run(repo, "all_base2new.sh", "CoOp", "vit_b16", DATASETS="dtd nosuch")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "unknown dataset 'nosuch': configs/datasets/nosuch.yaml does not exist" in proc.stderr


@pytest.mark.parametrize(
    ("script", "args", "env", "message"),
    [
        ("base2new.sh", ("dtd", "CoOp", "vit_b16"), {"data": None}, "DATA is not set"),
        ("xd.sh", ("CoOp", "vit_b16"), {"data": ""}, "DATA is not set"),
        (
            "fewshot.sh",
            ("dtd", "CoOp", "vit_b16"),
            {"data": "/no/such/dir", "DRY_RUN": "0"},
            "is not a directory",
        ),
        ("base2new.sh", ("nosuch", "CoOp", "vit_b16"), {}, "unknown dataset 'nosuch'"),
        (
            "base2new.sh",
            ("dtd", "CoOp", "nocfg"),
            {},
            "neither configs/trainers/CoOp/nocfg/dtd.yaml nor configs/trainers/CoOp/nocfg.yaml exists",
        ),
        (
            "all_base2new.sh",
            ("CoOp", "nocfg"),
            {"DATASETS": "dtd eurosat"},
            "neither configs/trainers/CoOp/nocfg/dtd.yaml nor configs/trainers/CoOp/nocfg.yaml exists",
        ),
        (
            "xd.sh",
            ("MoCoOp", "nocfg"),
            {},
            "neither configs/trainers/MoCoOp/nocfg/imagenet.yaml nor configs/trainers/MoCoOp/nocfg.yaml exists",
        ),
        ("base2new.sh", ("dtd", "CoOp", "vit_b16"), {"SEEDS": "1 x"}, "SEEDS must be non-negative integers"),
        ("fewshot.sh", ("dtd", "CoOp", "vit_b16"), {"SHOTS_LIST": "1 0"}, "positive integers"),
        ("base2new.sh", ("dtd", "CoOp"), {}, "usage: DATA=/path/to/data bash scripts/base2new.sh"),
        ("all_fewshot.sh", ("CoOp",), {}, "usage: DATA=/path/to/data bash scripts/all_fewshot.sh <Trainer>"),
    ],
)
def test_errors(repo, script, args, env, message):
    proc = run(repo, script, *args, **env)
    assert proc.returncode != 0 and message in proc.stderr and proc.stdout == ""


def test_must_run_from_repository_root(repo):
    proc = subprocess.run(
        ["bash", str(repo / "scripts/base2new.sh"), "dtd", "CoOp", "vit_b16"],
        check=False,
        cwd=repo.parent,
        env=os.environ | {"DATA": "/data", "DRY_RUN": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "run the scripts from the repository root" in proc.stderr


@pytest.mark.e2e
def test_real_run_then_rerun_then_results(repo, tmp_path):
    data = str(tmp_path / "data")
    env = {"data": data, "DRY_RUN": "0", "PYTHON": sys.executable, "SEEDS": "1 2"}
    first = lines(run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16", **env))
    calls = (repo / "calls.txt").read_text().splitlines()
    assert len(first) == len(calls) == 4  # each printed command ran, in order
    assert [c.split(" --output-dir ")[1].split()[0] for c in calls] == [
        line.split(" --output-dir ")[1].split()[0] for line in first
    ]
    second = lines(run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16", **env))
    assert all(line.startswith("# skip finished: ") for line in second) and len(second) == 4
    assert len((repo / "calls.txt").read_text().splitlines()) == 4

    sections, _ = build_report(repo / "output", declared=[1, 2])
    (table,) = sections[0].tables
    assert table.rows[0][:5] == [
        "DTD",
        "1,2",
        "51.50 ± 0.71 [45.15, 57.85]",
        "61.50 ± 0.71 [55.15, 67.85]",
        "56.06 ± 0.71 [49.65, 62.46]",
    ]


def test_eval_needs_a_finished_model(repo, tmp_path):
    env = {"data": str(tmp_path / "data"), "DRY_RUN": "0", "PYTHON": sys.executable, "SEEDS": "1"}
    proc = run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16", FAKE_UNFINISHED="1", **env)
    assert proc.returncode == 1
    assert (
        "the training run output/base2new/train_base/dtd/shots_16/CoOp/vit_b16/seed1 is not finished"
        in proc.stderr
    )
    assert len((repo / "calls.txt").read_text().splitlines()) == 1  # the evaluation never started


def test_scripts_never_delete():
    for path in SCRIPTS.glob("*.sh"):
        text = path.read_text()
        assert not re.search(r"(^|[\s;|&(])(rm|rmdir|unlink)\s", text, re.MULTILINE), path
        assert path.name == "_common.sh" or "set -euo pipefail" in text, path


def test_paths_with_spaces_and_quotes(repo, tmp_path):
    """The runs travel from tools.protocols to bash as shell words: odd paths arrive whole."""
    data = tmp_path / "my data's"
    data.mkdir()
    env = {"data": str(data), "DRY_RUN": "0", "PYTHON": sys.executable, "SEEDS": "1", "OUTPUT": "out dir"}
    out = lines(run(repo, "base2new.sh", "dtd", "CoOp", "vit_b16", **env))
    assert len(out) == 2 and all(
        "--root " + str(data).replace(" ", "\\ ").replace("'", "\\'") in line for line in out
    )
    assert "--output-dir out\\ dir/base2new/test_new/dtd/shots_16/CoOp/vit_b16/seed1" in out[1]
    for part in ("train_base", "test_new"):  # the evaluation found its model under the same path
        assert (repo / f"out dir/base2new/{part}/dtd/shots_16/CoOp/vit_b16/seed1/log.txt").exists()
