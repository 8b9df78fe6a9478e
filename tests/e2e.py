"""Helpers for end-to-end runs of train.py in a subprocess with the tiny CLIP.

Training runs go to a subprocess because Dassl's logger replaces sys.stdout and closes the
real one when it is garbage-collected.
"""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.conftest import ROOT

# Overrides that fit the tiny CLIP (32 px ViT) and a 2-core CPU.
TINY_OPTS = [
    "INPUT.SIZE",
    "(32, 32)",
    "TRAINER.PREC",
    "fp32",
    "DATALOADER.NUM_WORKERS",
    "0",
    "DATALOADER.TRAIN_X.BATCH_SIZE",
    "4",
    "DATALOADER.TEST.BATCH_SIZE",
    "8",
    "TRAIN.PRINT_FREQ",
    "1",
]


def randomise_images(dataset_dir, seed=0):
    """Give every generated image distinct random content (the layouts write one image)."""
    rng = np.random.default_rng(seed)
    for folder, _, files in sorted(os.walk(dataset_dir)):
        for name in sorted(files):
            if name.endswith(".jpg"):
                pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, name))


def run_train(*args, check=True, timeout=600):
    """Run train.py with `args` from the repository root; returns the CompletedProcess."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *map(str, args)]
    # Sleeping rather than spinning OpenMP threads: the test runner shares the CPU with them.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def result_accuracy(log_text):
    """Accuracy of the last Dassl `=> result` block, as printed (one decimal)."""
    blocks = re.findall(r"=> result\n\* total: [\d,]+\n\* correct: [\d,]+\n\* accuracy: ([\d.]+)%", log_text)
    assert blocks, "no '=> result' block in the log"
    return float(blocks[-1])


def evaluated_log(output_dir, epoch, total):
    """The log of an `--eval-only` run, checked: it loaded epoch `epoch`'s checkpoint and its
    result block counts `total` test images with an accuracy."""
    log = read_log(output_dir)
    assert f"model.pth.tar-{epoch} (epoch {epoch})" in log
    assert f"=> result\n* total: {total}\n" in log
    result_accuracy(log)
    return log


def read_log(output_dir):
    with open(os.path.join(output_dir, "log.txt")) as f:
        return f.read()
