"""Helpers for end-to-end runs of train.py in a subprocess with the tiny CLIP.

Training runs go to a subprocess because Dassl's logger replaces sys.stdout and closes the
real one when it is garbage-collected. `CASES` are the trainer configurations that the
end-to-end tests train once per session on the base classes (conftest's `base_run`).
"""

import os
import re
import subprocess
import sys
from typing import NamedTuple

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

PETS = "configs/datasets/oxford_pets.yaml"
DTD = "configs/datasets/dtd.yaml"


class Case(NamedTuple):
    """A trainer configuration run end to end: its dataset ("pets" or "dtd", conftest's
    generated data), config files and extra KEY VALUE options."""

    trainer: str
    config: str
    data: str
    dataset_config: str
    opts: tuple = ()

    def args(self, root, clip_path, output_dir, *extra, seed=1):
        """train.py's arguments for this case (2 epochs, 4 shots), `extra` appended."""
        return [
            "--seed", seed, "--trainer", self.trainer, "--config-file", self.config, "--root", root,
            "--dataset-config-file", self.dataset_config, "--output-dir", output_dir,
            "MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS, "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2",
            *self.opts, *extra,
        ]  # fmt: skip


CASES = {
    "CoOp": Case("CoOp", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", "pets", PETS),
    "CoCoOp": Case("CoCoOp", "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "pets", PETS),
    # amp: every loss term must be kept and logged in the mixed-precision mode as well.
    "KgCoOp": Case(
        "KgCoOp", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", "dtd", DTD, ("TRAINER.PREC", "amp")
    ),
    "MoCoOp-paper": Case(
        "MoCoOp", "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml", "pets", PETS, ("OPTIM.WARMUP_EPOCH", "1")
    ),
    "MoCoOp-release": Case(
        "MoCoOp",
        "configs/trainers/MoCoOp/release_vit_b16_ep25.yaml",
        "pets",
        PETS,
        ("OPTIM.WARMUP_EPOCH", "1"),
    ),
    "MoPD": Case("MoPD", "configs/trainers/MoPD/vit_b16_c4_bs128/oxford_pets.yaml", "pets", PETS),
    "LASP": Case(
        "LASP", "configs/trainers/LASP/release_vit_b16.yaml", "pets", PETS, ("OPTIM.WARMUP_EPOCH", "1")
    ),
    # Pets: ProGrad's template leaves a fixed word between the context and the class name.
    "ProGrad": Case("ProGrad", "configs/trainers/ProGrad/vit_b16_ep50.yaml", "pets", PETS),
    # Deep prompts in both blocks of each tower of the tiny CLIP.
    "IVLP": Case(
        "IVLP",
        "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
        "dtd",
        DTD,
        ("TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2"),
    ),
    "MaPLe": Case(
        "MaPLe",
        "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        "pets",
        PETS,
        ("TRAINER.MAPLE.PROMPT_DEPTH", "2"),
    ),
    "PromptSRC": Case(
        "PromptSRC",
        "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        "pets",
        PETS,
        ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"),
    ),
    # The tiny CLIP's ViT replaces RN50: its patch tokens are the local features.
    "PLOT": Case("PLOT", "configs/trainers/PLOT/rn50.yaml", "pets", PETS),
}


def randomise_images(dataset_dir, seed=0):
    """Give every generated image distinct random content (the layouts write one image)."""
    rng = np.random.default_rng(seed)
    for folder, _, files in sorted(os.walk(dataset_dir)):
        for name in sorted(files):
            if name.endswith(".jpg"):
                pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, name))


# Set by conftest for each test: whether it is marked e2e. Only such tests may start train.py,
# so that `pytest -m "not e2e"` (the fast lane) never does.
E2E_ALLOWED = True


def run_train(*args, check=True, timeout=600, env=None, python_args=()):
    """Run train.py with `args` from the repository root; returns the CompletedProcess.

    `env`: extra environment variables; `python_args`: given to Python before the script
    (e.g. `("-c", code)` to run train.py from code that patches something first)."""
    if not E2E_ALLOWED:
        raise RuntimeError("a test not marked @pytest.mark.e2e starts train.py: mark it (or its module) e2e")
    script = list(python_args) or [os.path.join(ROOT, "train.py")]
    cmd = [sys.executable, *script, *map(str, args)]
    # Sleeping rather than spinning OpenMP threads: the test runner shares the CPU with them.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **(env or {})}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


# train.py, with os.replace (the last step of every atomic write) patched to SIGKILL the process
# right before or after the `nth` write of a file named `name`: argv is WHEN NAME NTH ARGS...
KILL_AROUND_WRITE = """
import os, runpy, signal, sys

when, name, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
del sys.argv[1:4]
sys.argv[0] = "train.py"
writes = 0
real_replace = os.replace


def replace(src, dst):
    global writes
    writes += os.path.basename(dst) == name
    hit = os.path.basename(dst) == name and writes == nth
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if hit and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
runpy.run_path("train.py", run_name="__main__")
"""


def kill_around_write(when, name, nth, *args, env=None):
    """Run train.py with `args` and SIGKILL it right `when` ("before" or "after") the `nth`
    atomic write of a file named `name` (e.g. "checkpoint", "model.pth.tar-2")."""
    proc = run_train(when, name, nth, *args, check=False, env=env, python_args=("-c", KILL_AROUND_WRITE))
    assert proc.returncode == -9, f"not killed {when} write {nth} of {name}:\n{proc.stderr[-3000:]}"


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
