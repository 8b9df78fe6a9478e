"""README's short path ("Your own images: train, predict, export"), its lines run as written in a
scratch repository that links this one, on generated folders of images: the CPU path with the
demo's tiny CLIP exactly as written (it names the class-name words it never saw), the ViT-B/16
line with the session's tiny CLIP appended as KEY VALUE options (no download). The demo run's
test accuracy is reproduced by predict.py on its test split, and the exported classifier, loaded
where Dassl and yacs cannot be imported, predicts what predict.py predicts."""

import ast
import csv
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.conftest import ROOT
from tests.e2e import TINY_OPTS, read_log
from tests.image_folders import make_pool, write_images

pytestmark = pytest.mark.e2e

HEADING = "## Your own images: train, predict, export"
CLASSES = {"blue_jay": 8, "robin": 8, "sparrow": 8}

# The exported classifier where Dassl and yacs cannot be imported: its predictions as JSON.
WITHOUT_DASSL = """
import json, sys

for name in ("dassl", "yacs", "trainers", "datasets"):
    sys.modules[name] = None
from clipprompt.exported import load_exported

print(json.dumps(load_exported(sys.argv[1]).predict(sys.argv[2:], topk=3)))
"""


def readme_commands():
    """The command lines of the README's short path (continuation lines joined)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(re.escape(HEADING) + r".*?```bash\n(.*?)```", text, re.DOTALL)[1]
    lines = block.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def scratch_repo(path):
    """This repository's code and configs, linked, in a folder of its own (the README copies a
    config into configs/datasets/), with `python` on PATH being this interpreter."""
    path.mkdir()
    for name in ("train.py", "predict.py", "trainers", "datasets", "clipprompt", "tools", "assets"):
        (path / name).symlink_to(os.path.join(ROOT, name))
    (path / "configs").mkdir()
    (path / "configs" / "trainers").symlink_to(os.path.join(ROOT, "configs", "trainers"))
    (path / "configs" / "datasets").mkdir()
    for name in os.listdir(os.path.join(ROOT, "configs", "datasets")):
        (path / "configs" / "datasets" / name).symlink_to(os.path.join(ROOT, "configs", "datasets", name))
    (path / "bin").mkdir()
    # A wrapper, not a symlink: a symlink to a virtual environment's python is not inside the
    # environment, so Python would start without the environment's packages.
    (path / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (path / "bin" / "python").chmod(0o755)
    return path


def run(repo, command):
    env = {
        **os.environ,
        "PATH": f"{repo / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    proc = subprocess.run(
        ["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def logged_result(run):
    total, correct = re.findall(r"=> result\n\* total: (\d+)\n\* correct: (\d+)", read_log(run))[-1]
    return int(total), int(correct)


def test_readme_short_path(tmp_path, tiny_clip_path):
    repo = scratch_repo(tmp_path / "repo")
    make_pool(str(repo / "data"), "my_birds", CLASSES)
    write_images(str(repo / "new_photos"), 3, np.random.default_rng(7))
    (repo / "new_photos" / "000.jpg").rename(repo / "new_photos" / "a.jpg")  # the README's example
    commands = readme_commands()
    assert [c.split()[:2] for c in commands] == [
        ["cp", "configs/datasets/image_folder.yaml"], ["sed", "-i"], ["python", "train.py"],
        ["python", "predict.py"], ["python", "-m"], ["python", "-c"], ["python", "train.py"],
    ]  # fmt: skip
    assert "configs/trainers/CoOp/demo.yaml" in commands[2] and "vit_b16" in commands[-1]
    tiny = shlex.join(["MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS, "OPTIM.MAX_EPOCH", "1"])
    printed = [run(repo, c) for c in commands[:-1]]
    # The demo CLIP's start-up warning names the words of the class names it never saw.
    assert (
        "3 word(s) that the CLIP of MODEL.BACKBONE.NAME assets/demo_clip_rn_tiny.pt.gz never saw in "
        in printed[2]
    )
    assert "'jay' (blue jay); 'robin' (robin); 'sparrow' (sparrow)" in printed[2]
    vit = run(repo, f"{commands[-1]} {tiny}")
    assert "WARNING" not in vit and logged_result(repo / "output" / "my_birds" / "CoOp")[0] == 6

    # Trained on the split the first run made: 2 of the 8 images per class are test images.
    train_dir = repo / "output" / "my_birds" / "CoOp_demo"
    with open(repo / "data" / "my_birds" / "split_zhou_ImageFolder.json") as f:
        test_split = json.load(f)["test"]
    assert logged_result(train_dir)[0] == len(test_split) == 6

    # predict.py on the run's own test images gives its accuracy.
    test_images = [str(repo / "data" / "my_birds" / path) for path, _, _ in test_split]
    run(repo, f"python predict.py --model-dir {train_dir} --output test.jsonl {shlex.join(test_images)}")
    with open(repo / "test.jsonl") as f:
        records = [json.loads(line) for line in f]
    correct = sum(r["top"][0]["class"] == name for r, (_, _, name) in zip(records, test_split, strict=True))
    assert (len(records), correct) == logged_result(train_dir)

    # predictions.csv of the new photos, and the exported classifier without Dassl on the same files.
    with open(repo / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    photos = [str(repo / "new_photos" / n) for n in ("001.jpg", "002.jpg", "a.jpg")]
    assert [r["image"] for r in rows] == [os.path.relpath(p, repo) for p in photos]
    exported = subprocess.run(
        [sys.executable, "-c", WITHOUT_DASSL, str(repo / "my_birds.safetensors"), *photos],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    for row, prediction in zip(rows, json.loads(exported), strict=True):
        assert [row[f"class_{j}"] for j in (1, 2, 3)] == [t["class"] for t in prediction["top"]]
        expected = [float(row[f"probability_{j}"]) for j in (1, 2, 3)]
        assert [t["probability"] for t in prediction["top"]] == pytest.approx(expected, abs=1e-6)
        assert {t["class"] for t in prediction["top"]} == {"blue jay", "robin", "sparrow"}
    # The README's one-liner printed the prediction of new_photos/a.jpg.
    shown = ast.literal_eval(printed[5].strip())
    assert [t["class"] for t in shown[0]["top"]] == [rows[-1][f"class_{j}"] for j in (1, 2, 3)]
