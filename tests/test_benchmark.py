"""tools.benchmark at toy sizes: it runs, its JSON is complete, and its numbers are consistent.

The timings themselves are not asserted (they depend on the machine); docs/PERFORMANCE.md has
the measured ones. The ImageNet memory model is asserted, since the configs rely on it.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.conftest import ROOT
from tools.benchmark import TARGETS

TOY = ["--batch", "1", "--image-size", "32", "--threads", "2"]


def benchmark(tmp_path, *args):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", *TOY, *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_trainer_table_and_targets(tmp_path):
    stdout, result = benchmark(
        tmp_path,
        "--trainers",
        "ZeroshotCLIP",
        "CoOp",
        "MoCoOp",
        "--classes",
        "2",
        "--virtual",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
    )
    assert "### Targets" in stdout
    assert list(result["trainers"]) == ["ZeroshotCLIP", "CoOp", "MoCoOp"]
    targets = result["targets"]
    assert set(targets) == {"a", "b", "c"}
    for name, (_, relation, bound) in TARGETS.items():
        value = targets[name]["value"]
        assert value > 0 and targets[name]["met"] == (value >= bound if relation == ">=" else value <= bound)
    # (a) 77 positions against the longest CoOp prompt: 16 context tokens, SOT, ".", EOT and a name.
    assert 77 / 26 < targets["a"]["token_ratio"] < 77 / 20
    # (c) is the step-time ratio divided by the token ratio.
    c = targets["c"]
    assert c["value"] == pytest.approx(c["step_ratio"] / c["token_ratio"], abs=2e-3)


def test_imagenet_memory_model(tmp_path):
    _, result = benchmark(
        tmp_path,
        "--scale",
        "imagenet",
        "--experts",
        "2",
        "--classes",
        "2",
        "--virtual",
        "2",
        "--chunk-size",
        "2",
    )
    imagenet = result["imagenet"]
    # The analytic bytes per token and block that the estimates use are what autograd keeps.
    for prec in ("fp16", "fp32"):
        per = imagenet["per_token_per_layer_bytes"][prec]
        assert per["text_analytic"] == per["text_autograd"]
    # Full scale (20 experts x 1000 text classes, fp16): only CHECKPOINT fits an 80 GB GPU,
    # and the configs' CHUNK_SIZE 1000 + CHECKPOINT needs well under 10 GiB.
    full = {(r["CHUNK_SIZE"], r["CHECKPOINT"]): r["estimate_bytes"] for r in imagenet["full_scale"]["rows"]}
    assert full[0, False] > 70 * 2**30 and full[1000, True] < 10 * 2**30
    measured = {(r["CHUNK_SIZE"], r["CHECKPOINT"]): r for r in imagenet["measured_scale"]["rows"]}
    assert measured[2, True]["peak_bytes"] < measured[0, False]["peak_bytes"]
    assert measured[2, True]["positions"] < measured[0, False]["positions"]
