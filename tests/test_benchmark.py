"""tools.benchmark at toy sizes: it runs, its JSON is complete, and its numbers are consistent;
the targets' verdicts on made-up timings just above and just below each bound.

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
from tools.benchmark.table import targets

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
    goals = result["targets"]
    assert set(goals) == {"a", "b", "c"}
    for goal in goals.values():
        assert goal["value"] > 0 and goal["met"] in (True, False)
    # (a) 77 positions against the longest CoOp prompt: 16 context tokens, SOT, ".", EOT and a name.
    assert 77 / 26 < goals["a"]["token_ratio"] < 77 / 20
    assert goals["b"]["calls"] == 3  # the longer alternation: 3 x --repeats


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


def timing(median, fastest=None):
    return {"median_s": median, "min_s": fastest or median, "times_s": [median]}


def measured(coop_77, zs_eval, moc_step):
    """Trainer rows and the paired evaluation as the trainer table writes them: CoOp's
    truncated text encoding takes 1 s (77 tokens: `coop_77` s), MoCoOp's evaluation 1 s
    (ZeroshotCLIP's: `zs_eval` s), CoOp's step 1 s (MoCoOp's, with twice the tokens: `moc_step` s)."""
    text = {"default": timing(1.0), "77-token": timing(coop_77)}
    rows = {
        "ZeroshotCLIP": {"eval": {"images_per_s": 10.0}},
        "CoOp": {
            "text_fwd_bwd": text,
            "text_fwd": text,
            "tokens_per_step": {"default": 100, "77-token": 770},
            "train_step": timing(1.0),
        },
        "MoCoOp": {
            "eval": {"images_per_s": 10.0 * zs_eval},
            "tokens_per_step": {"default": 200},
            "train_step": timing(moc_step),
        },
    }
    paired = {"ZeroshotCLIP": timing(zs_eval, 0.5), "MoCoOp": timing(1.0, 0.5)}
    return rows, paired


@pytest.mark.parametrize(
    ("coop_77", "zs_eval", "moc_step", "met"),
    [
        # (a) >= 3x, (b) >= 0.9 (ZeroshotCLIP's time / MoCoOp's), (c) <= 1.2 with 2x the tokens.
        (3.01, 0.91, 2.38, True),
        (3.0, 0.9, 2.4, True),
        (2.99, 0.89, 2.42, False),
    ],
)
def test_targets_verdicts(coop_77, zs_eval, moc_step, met):
    rows, paired = measured(coop_77, zs_eval, moc_step)
    for goals in (targets(rows, paired), targets(rows)):  # (b) from the alternation or the table
        assert {k: g["met"] for k, g in goals.items()} == {"a": met, "b": met, "c": met}
        assert goals["a"]["value"] == round(coop_77, 3) and goals["a"]["token_ratio"] == 7.7
        assert goals["b"]["value"] == zs_eval
        assert goals["c"]["value"] == round(moc_step / 2, 3) and goals["c"]["token_ratio"] == 2
    assert targets(rows, paired)["b"]["best_calls"] == 1.0  # the fastest calls' ratio, 0.5 / 0.5


def test_targets_need_their_trainers():
    rows, paired = measured(3.5, 1.0, 2.0)
    assert set(targets({"CoOp": rows["CoOp"]})) == {"a"}
    assert set(targets({k: rows[k] for k in ("ZeroshotCLIP", "MoCoOp")}, paired)) == {"b"}
    rows["MoCoOp"]["train_step"] = timing(None)  # ran out of memory: no time
    assert targets(rows, paired)["c"] | {"target": ""} == {
        "target": "",
        "value": None,
        "met": None,
        "token_ratio": 2.0,
        "step_ratio": None,
        "text_only": None,
    }
