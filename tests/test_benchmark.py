"""tools.benchmark at toy sizes: every suite runs from the command line, its JSON is complete
and its numbers are consistent; the token positions it reports are the ones the text encoder
runs; the targets' verdicts on made-up measurements just above and just below each bound.

The timings themselves are not asserted (they depend on the machine); docs/PERFORMANCE.md has
the measured ones. The ImageNet memory model is asserted, since the configs rely on it.
"""

import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from tests.conftest import ROOT
from tools.benchmark.build import Bench
from tools.benchmark.measure import CPU_MEMORY_SHARE, PeakMemory, available_bytes, round_robin
from tools.benchmark.paths import PATHS, eval_positions, prompt_encoder, step_positions
from tools.benchmark.targets import TARGETS, verdicts

FAST = ["--threads", "2", "--repeats", "1", "--warmup", "0"]
TOY = ["--toy", *FAST]  # a tiny CLIP


def benchmark(tmp_path, *args, options=TOY):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", *options, *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_trainer_table(tmp_path):
    stdout, result = benchmark(
        tmp_path,
        "--trainers",
        "ZeroshotCLIP",
        "CoOp",
        "MoCoOp",
        "--classes",
        "2",
        "--virtual",
        "1",
        "--batch",
        "1",
    )
    assert "shared prefix vs truncated only (fwd+bwd)" in stdout
    rows = result["trainers"]
    assert list(rows) == ["ZeroshotCLIP", "CoOp", "MoCoOp"]
    for name in ("CoOp", "MoCoOp"):
        tokens = rows[name]["tokens_per_step"]
        assert tokens["shared"] < tokens["truncated"] == tokens["math"] < tokens["77-token"]
        assert set(rows[name]["text_fwd_bwd"]) == set(PATHS)
        assert set(rows[name]["train_step"]) == {"shared", "truncated"}
        assert all(r["median_s"] > 0 for r in rows[name]["text_fwd_bwd"].values())
    # CoOp: 2 prompts of 16 context vectors: 77 positions each on the full reference path.
    assert rows["CoOp"]["tokens_per_step"]["77-token"] == 2 * 77
    assert rows["MoCoOp"]["tokens_per_step"]["77-token"] == 6 * 3 * 77  # 6 pets experts x (2 + 1)


def test_an_open_clip_backbone_on_every_text_path(tmp_path, tiny_open_clip):
    """--backbone open_clip:<model> (here a tiny JSON config, tests/open_clip_models.py): its text
    tower, with random weights, on every path; a text tower with only its reference path is refused."""
    spec, _ = tiny_open_clip("layerscale")
    options = [*FAST, "--backbone", spec.name, "--backbone-config", spec.config]
    _, result = benchmark(
        tmp_path, "--trainers", "CoOp", "--classes", "2", "--virtual", "0", "--batch", "1", options=options
    )
    assert result["machine"]["backbone"] == spec.name and result["args"]["image_size"] == 32
    tokens = result["trainers"]["CoOp"]["tokens_per_step"]
    assert tokens["shared"] < tokens["truncated"] == tokens["math"] < tokens["77-token"] == 2 * 77
    assert set(result["trainers"]["CoOp"]["text_fwd_bwd"]) == set(PATHS)
    siglip, _ = tiny_open_clip("siglip")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.benchmark", "--backbone", siglip.name, "--backbone-config", siglip.config],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert (
        "the benchmark compares text-encoder paths, and this text tower has only its reference path"
        in proc.stderr
    )


def test_dataset_size_table(tmp_path):
    _, result = benchmark(
        tmp_path, "--size", "eurosat", "--trainers", "ZeroshotCLIP", "CoCoOp", "MoCoOp",
        "--classes", "3", "--batch", "1", "--eval-batch", "2",
    )  # fmt: skip
    assert result["inputs"]["names"]["source"] == "eurosat's class names"
    assert result["inputs"]["base"] == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"]
    assert result["inputs"]["test_images"] == 8100
    moc, cocoop = result["trainers"]["MoCoOp"], result["trainers"]["CoCoOp"]
    assert moc["test_batches"] == 4050 and moc["eval_batch"] == 2
    # 6 EuroSAT experts x 3 classes; MoCoOp has no virtual classes at a dataset's size.
    assert moc["prompts_per_step"] == 18
    assert set(moc["train_step"]) == {"shared", "truncated", "77-token"}
    totals = moc["test_set_s"]
    for path in ("shared", "truncated", "77-token"):
        build, batch = moc["cache_build"][path]["median_s"], moc["eval"]["median_s"]
        assert totals["cached"][path] == pytest.approx(build + 4050 * batch)
        assert totals["per_batch"][path] == pytest.approx(4050 * moc["per_batch"][path]["median_s"])
    assert totals["default"] == totals["cached"]["shared"]
    # CoCoOp cannot cache: per batch only, each image's prompts a set of their own.
    assert (
        "eval" not in cocoop
        and cocoop["test_set_s"]["default"] == cocoop["test_set_s"]["per_batch"]["shared"]
    )
    assert cocoop["eval_tokens_per_batch"]["77-token"] == 2 * 3 * 77


@pytest.fixture(scope="module")
def bench(tiny_clip_path):
    args = argparse.Namespace(dataset="oxford_pets", experts=None, prec="fp32", image_size=32, device="cpu")
    backbone = {"name": tiny_clip_path, "weights": "", "model_config": ""}  # MODEL.BACKBONE.*
    return Bench(args, torch.device("cpu"), backbone)


@pytest.mark.parametrize("name", ["CoOp", "KgCoOp", "CoCoOp", "MoCoOp", "MoPD", "LASP", "ProGrad"])
def test_counted_positions_are_what_the_encoder_runs(bench, name):
    """The benchmark's token counts against the positions the first residual block sees while
    the trainer encodes the prompts of a training step and of an evaluation, on every path,
    in one call and in chunks."""
    classes, virtual, batch = ["dog", "school bus", "globe_thistle", "abyssinian"], ["great pyrenees"], 2
    image = torch.randn(batch, 3, 32, 32)
    seen = []
    for path, opts in PATHS.items():
        trainer = bench.build(name, classes, virtual, opts)
        encoder = trainer.model.text_encoder
        hook = encoder.blocks[0].ln_1.register_forward_hook(
            lambda m, inp, out: seen.append(inp[0].numel() // inp[0].shape[-1])
        )
        for chunk in (0, 3):
            encoder.chunk_size = chunk  # what TEXT_ENCODER.CHUNK_SIZE sets
            with torch.no_grad():
                seen.clear()
                prompt_encoder(trainer, trainer.model.encode_image(image))()
                assert sum(seen) == sum(step_positions(trainer, batch)), (path, chunk)
                assert len(seen) == len(step_positions(trainer, batch))
                seen.clear()
                trainer.model_inference(image)
                assert sum(seen) == sum(eval_positions(trainer, batch)), (path, chunk)
        hook.remove()


def test_imagenet_memory_model(tmp_path):
    # ViT-B/16's architecture (the memory model is about its widths), at 32 pixels.
    _, result = benchmark(
        tmp_path, "--size", "imagenet", "--experts", "2", "--classes", "2", "--virtual", "2", "--chunk-size", "2",
        "--batch", "1", "--image-size", "32", options=FAST,
    )  # fmt: skip
    imagenet = result["imagenet"]
    for prec in ("fp16", "fp32"):
        per = imagenet["per_token_per_layer_bytes"][prec]
        # The analytic bytes per token and block are what autograd keeps on the unshared path;
        # the packed path keeps about as much per position it runs.
        assert per["text_analytic"] == per["text_autograd"]
        assert per["text_autograd"] <= per["text_shared_autograd"] <= 1.25 * per["text_autograd"]
    full = {(r["SHARE_PREFIX"], r["CHUNK_SIZE"], r["CHECKPOINT"]): r for r in imagenet["full_scale"]["rows"]}
    # Full scale (20 experts x 1000 text classes, fp16): without the shared prefix only
    # checkpointing fits an 80 GB GPU; with it a step runs about a quarter of the positions.
    assert full[False, 0, False]["estimate_bytes"] > 70 * 2**30 and not full[False, 0, False]["fits_80GB"]
    assert full[True, 0, False]["positions"] < 0.3 * full[False, 0, False]["positions"]
    assert full[True, 0, False]["fits_80GB"] and full[True, 1000, True]["estimate_bytes"] < 5 * 2**30
    measured = {
        (r["SHARE_PREFIX"], r["CHUNK_SIZE"], r["CHECKPOINT"]): r for r in imagenet["measured_scale"]["rows"]
    }
    assert measured[True, 0, False]["positions"] < measured[False, 0, False]["positions"]
    assert measured[True, 0, False]["peak_bytes"] < measured[False, 0, False]["peak_bytes"]
    assert measured[True, 2, True]["peak_bytes"] < measured[True, 0, False]["peak_bytes"]


def test_suites_targets_precision_gpu(tmp_path):
    stdout, result = benchmark(tmp_path, "--suite", "targets", "--toy")
    assert "### Targets" in stdout
    goals = result["targets"]
    # A T3 goal per benchmark row of a trainer that learns (zero-shot CLIP has no step).
    from tools.benchmark.build import TRAINERS

    steps = [f"T3 {name}" for name in TRAINERS if name != "ZeroshotCLIP"]
    assert {"T3 CoOp", "T3 MoCoOp", "T3 MoCoOp-release", "T3 MoPD", "T3 MaPLe"} <= set(steps)
    assert list(goals) == ["T1", "T2 MoCoOp", *steps, "T4", "M1", "M2", "M3"]
    assert all(g["met"] in (True, False) and g["value"] > 0 for g in goals.values())
    assert goals["T1"]["token_bound"] > 1 and goals["T4"]["test_batches"] == 19850

    _, result = benchmark(
        tmp_path, "--suite", "precision", "--trainers", "KgCoOp", "MoCoOp", "--classes", "2"
    )
    for row in result["trainers"].values():
        assert set(row["train_step"]) == {"fp32", "amp"} and row["losses"]["all_terms_finite"]
    assert set(result["trainers"]["MoCoOp"]["losses"]["terms"]["amp"]) == {
        "loss_cls",
        "loss_router",
        "loss_text",
    }

    _, result = benchmark(
        tmp_path, "--suite", "gpu", "--device", "cpu", "--toy", "--trainers", "CoOp", "MoCoOp"
    )
    assert set(result["trainers"]["MoCoOp"]["train_step"]) == {"fp16", "amp"}
    assert set(result["loss_parity"]["CoOp"]["relative_difference"]) == {"fp16", "amp"}
    assert len(result["imagenet"]["measured_scale"]["rows"]) == 6


def test_a_call_too_large_for_memory_is_skipped():
    args = argparse.Namespace(repeats=2, warmup=1)
    calls = []
    res = round_robin(
        {"small": lambda: calls.append("small"), "huge": lambda: calls.append("huge")},
        args,
        torch.device("cpu"),
        PeakMemory(torch.device("cpu")),
        {"small": 1, "huge": 2 * available_bytes(torch.device("cpu")) / CPU_MEMORY_SHARE},
    )
    assert calls == ["small"] * 3 and res["huge"]["skipped"] and res["huge"]["times_s"] == []
    assert res["small"]["skipped"] is None and len(res["small"]["times_s"]) == 2


def made_up(t1, t2, t3, t4, m1, m23):
    """Measurements as the targets suite records them: the shared path takes 1 s (T4: the
    cached evaluation 1 s in all), the reference `t1`..`t4` s; peaks of `m1` and `m23` GiB."""

    def times(slow):
        return {p: {"median_s": s, "min_s": s} for p, s in (("shared", 1.0), ("truncated", slow))}

    # The text encoding: half of the shared step, a quarter of the truncated one.
    step = {"tokens": {"shared": 10, "truncated": 20}, "text_times": times(0.5)}
    rows = {k: {"trainer": "MoCoOp", "tokens": 100, "peak_bytes": v * 2**30} for k, v in (("M1", m1), ("M2", m23), ("M3", m23))}  # fmt: skip
    return {
        "T1": {"tokens": {"shared": 10, "truncated": 50}, "times": times(t1)},
        "steps": {"T2 MoCoOp": {**step, "times": times(t2)}, "T3 CoOp": {**step, "times": times(t3)}},
        "T4": {
            "test_set_s": {"cached": {"shared": 1.0}, "per_batch": {"77-token": t4}},
            "tokens": {"cache_build_shared": 10, "per_batch_77": 100, "image_per_batch": 10},
            "test_batches": 2,
        },
        "memory": {"rows": rows},
    }


@pytest.mark.parametrize(
    ("above", "met"),
    [(1.01, True), (1.0, True), (0.99, False)],
)
def test_target_verdicts(above, met):
    bounds = {k: bound for k, (_, _, bound) in TARGETS.items()}
    below = 2 - above  # peaks: just under the bound is met
    goals = verdicts(
        made_up(
            *(bounds[k] * above for k in ("T1", "T2", "T3", "T4")), bounds["M1"] * below, bounds["M2"] * below
        )
    )
    assert {k: g["met"] for k, g in goals.items()} == dict.fromkeys(goals, met)
    assert goals["T1"]["value"] == round(bounds["T1"] * above, 3) and goals["T1"]["token_bound"] == 5
    assert goals["T3 CoOp"]["token_bound"] == 2 and goals["T3 CoOp"]["text_only"] == 0.5
    # The ceiling: the truncated step without its text encoding.
    assert goals["T2 MoCoOp"]["ceiling"] == round(bounds["T2"] * above / (bounds["T2"] * above - 0.5), 3)
    # T4's bound counts an image position as (768 / 512)^2 text positions: 2 batches of 100
    # text and 10 image positions per batch, against a cache build of 10 and the images.
    image = 2.25 * 10
    assert goals["T4"]["weighted_token_ratio"] == round(2 * (100 + image) / (10 + 2 * image), 3)
    assert math.isclose(goals["M1"]["value"], round(bounds["M1"] * below, 3))
