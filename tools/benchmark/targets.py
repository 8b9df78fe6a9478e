"""`--suite targets`: the speed and memory targets of the shared prefix (issue 16), measured in
one run, each speed ratio next to its token-count bound.

T1 CoOp's text encoding (forward + backward) at 100 classes, truncated-only time / shared time.
T2 MoCoOp (paper preset) at EuroSAT's sizes (6 experts, its 10 classes), batch 8: training step,
   truncated-only / shared.
T3 every trainer's training step at 10 classes (MoCoOp: + 10 virtual), batch 8: truncated-only
   / shared, "no slower" (within a stated noise allowance).
T4 MoCoOp (paper) at SUN397's sizes (4 experts, 397 classes, 19,850 test images, test batch
   100): the full test-set evaluation per batch at 77 tokens / cached on the shared path
   (extrapolated from timed batches).
M1-M3 peak memory of a MoCoOp training step, 6 experts, 50 + 50 text classes, batch 8: the
   paper preset with default options, and both presets with the options the docs recommend
   for memory (CHECKPOINT, CHUNK_SIZE = one expert's text classes).
"""

import argparse

import torch

from tools.benchmark.build import SIZES, TRAINERS, classnames, learns
from tools.benchmark.imagenet import encoding_bytes
from tools.benchmark.measure import round_robin
from tools.benchmark.paths import (
    PATHS,
    cache_build,
    eval_positions,
    evaluation,
    fwd_bwd,
    prompt_encoder,
    step_positions,
    train_step,
)
from tools.benchmark.sizes import test_set_seconds
from tools.benchmark.table import elem_bytes, make_batch

GIB = 2**30
# An image position costs about (768 / 512)^2 text positions: the per-position work of the
# linear layers, which dominate both towers at these lengths, grows with the width squared.
# T4's ratio of positions run, weighted so, estimates its speed-up (not a strict bound: the
# 77-token attention adds work on the reference side).
IMAGE_POSITION_COST = (768 / 512) ** 2
# Step times of alternating calls differ by a few percent from load alone: "no slower" allows it.
NOISE = 0.03
TARGETS = {
    "T1": ("CoOp text encoding fwd+bwd, 100 classes: truncated-only / shared", ">=", 2.5),
    "T2": ("MoCoOp (paper) step, EuroSAT sizes, batch 8: truncated-only / shared", ">=", 1.3),
    "T3": ("training step, 10 classes, batch 8: truncated-only / shared (no slower)", ">=", 1 - NOISE),
    "T4": ("MoCoOp (paper) test-set evaluation, SUN397 sizes: per-batch 77-token / cached shared", ">=", 3.0),
    "M1": ("MoCoOp paper, default options: peak GiB of a step", "<=", 4.0),
    "M2": ("MoCoOp paper, CHECKPOINT + CHUNK_SIZE: peak GiB of a step", "<=", 3.0),
    "M3": ("MoCoOp release, CHECKPOINT + CHUNK_SIZE: peak GiB of a step", "<=", 3.0),
}
# Each target's setting: dataset, classes, virtual text classes, batch (the sizes);
# --toy shrinks them to test the script.
SETTINGS = {
    "T1": ("oxford_pets", 100, 0, 8),
    "T2": ("eurosat", SIZES["eurosat"]["classes"], 0, 8),
    "T3": ("oxford_pets", 10, 10, 8),
    "T4": ("sun397", SIZES["sun397"]["classes"], 0, 100),
    "M": ("oxford_pets", 50, 50, 8),
}
TOY = {"T1": 3, "T2": 2, "T3": 2, "T4": 3, "M": 2}


def setting(args, key):
    dataset, classes, virtual, batch = SETTINGS[key]
    if args.toy:
        classes, virtual, batch = TOY[key], min(virtual, 1), 1
    sub = argparse.Namespace(**{**vars(args), "dataset": dataset, "experts": None})
    names, source = classnames(sub, classes + virtual)
    return sub, names[:classes], names[classes:], batch, source


def run_targets(args, device, bench, peak):
    """{target: verdict and details}, and the measurements behind them."""
    measured = {
        "T1": text_target(args, device, bench, peak),
        "steps": step_targets(args, device, bench, peak),
        "T4": eval_target(args, device, bench, peak),
        "memory": memory_targets(args, device, bench, peak),
    }
    return verdicts(measured), measured


def text_target(args, device, bench, peak):
    sub, base, virtual, batch, source = setting(args, "T1")
    built = {p: bench.build("CoOp", base, virtual, PATHS[p], sub) for p in ("shared", "truncated")}
    fns = {}
    for path, trainer in built.items():
        trainer.set_model_mode("train")
        fns[path] = fwd_bwd(trainer, prompt_encoder(trainer))
    res = round_robin(fns, args, device, peak)
    print("T1 timed", flush=True)
    tokens = {p: sum(step_positions(t, batch)) for p, t in built.items()}
    return {"classes": len(base), "names": source, "tokens": tokens, "times": res}


def step_targets(args, device, bench, peak):
    """T2 and T3 in one alternation: (target, trainer) -> tokens, and times per path of the
    training step and of its text encoding alone (forward and backward, as in the step)."""
    fns, out = {}, {}
    cases = [("T2", "MoCoOp")] + [("T3", n) for n in TRAINERS]
    for key, name in cases:
        sub, base, virtual, batch, source = setting(args, key)
        data = make_batch(sub, device, batch, len(base))
        tokens = {}
        if not learns(bench.build(name, base, virtual, PATHS["shared"], sub)):
            continue  # no training step
        for path in ("shared", "truncated"):
            trainer = bench.build(name, base, virtual, PATHS[path], sub)
            trainer.set_model_mode("train")
            with torch.no_grad():
                feats = trainer.model.encode_image(data["img"])
            fns[(key, name, "step", path)] = train_step(trainer, data)
            fns[(key, name, "text", path)] = fwd_bwd(trainer, prompt_encoder(trainer, feats))
            tokens[path] = sum(step_positions(trainer, batch))
        out[(key, name)] = {"classes": len(base), "virtual": len(virtual), "names": source, "tokens": tokens}
    for (key, name, kind, path), res in round_robin(fns, args, device, peak).items():
        out[(key, name)].setdefault("times" if kind == "step" else "text_times", {})[path] = res
    print("T2, T3 timed", flush=True)
    return {f"{key} {name}": value for (key, name), value in out.items()}


def eval_target(args, device, bench, peak):
    sub, base, virtual, batch, source = setting(args, "T4")
    shared = bench.build("MoCoOp", base, virtual, PATHS["shared"], sub)
    full = bench.build("MoCoOp", base, virtual, PATHS["77-token"], sub)
    image = make_batch(sub, device, batch, len(base), seed=1)["img"]
    for trainer in (shared, full):
        trainer.set_model_mode("eval")
    fns = {
        "eval": evaluation(shared, image, device),
        "cache_build": cache_build(shared),
        "per_batch_77": evaluation(full, image, device, cached=False),
    }
    estimates = {"per_batch_77": encoding_bytes(eval_positions(full, batch), False, elem_bytes(args.prec))}
    timing = argparse.Namespace(**{**vars(args), "repeats": args.eval_repeats, "warmup": args.eval_warmup})
    res = round_robin(fns, timing, device, peak, estimates)
    print("T4 timed", flush=True)
    test_images = SIZES["sun397"]["test_images"]
    row = {
        "test_batches": -(-test_images // batch),
        "eval": res["eval"],
        "cache_build": {"shared": res["cache_build"]},
        "per_batch": {"77-token": res["per_batch_77"]},
    }
    image_positions = batch * shared.model.image_encoder.positional_embedding.shape[0]
    return {
        "classes": len(base),
        "experts": len(shared.model.groups),
        "names": source,
        "batch": batch,
        "test_images": test_images,
        "tokens": {
            "cache_build_shared": sum(eval_positions(shared, batch)),
            "per_batch_77": sum(eval_positions(full, batch)),
            "image_per_batch": image_positions,
        },
        "times": res,
        "test_set_s": test_set_seconds(row),
        "test_batches": row["test_batches"],
    }


def memory_targets(args, device, bench, peak):
    """Peak memory of one training step (after a warm-up step) of each memory setting."""
    sub, base, virtual, batch, source = setting(args, "M")
    chunk = str(len(base) + len(virtual))  # one expert's text classes
    memory_opts = ["TRAINER.TEXT_ENCODER.CHECKPOINT", "True", "TRAINER.TEXT_ENCODER.CHUNK_SIZE", chunk]
    settings = {
        "M1": ("MoCoOp", []),
        "M2": ("MoCoOp", memory_opts),
        "M3": ("MoCoOp-release", memory_opts),
        "paper, truncated only": ("MoCoOp", PATHS["truncated"]),
        "release, default options": ("MoCoOp-release", []),
    }
    data = make_batch(sub, device, batch, len(base))
    out = {}
    for key, (name, opts) in settings.items():
        trainer = bench.build(name, base, virtual, opts, sub)
        trainer.set_model_mode("train")
        once = argparse.Namespace(**{**vars(args), "repeats": 1, "warmup": 1})
        res = round_robin({key: train_step(trainer, data)}, once, device, peak)[key]
        out[key] = {"trainer": name, "opts": opts, "tokens": sum(step_positions(trainer, batch)), **res}
        del trainer
    print("memory measured", flush=True)
    return {"classes": len(base), "virtual": len(virtual), "batch": batch, "names": source, "rows": out}


def _speedup(times, slow, fast):
    a, b = times[slow], times[fast]
    med = a["median_s"] / b["median_s"] if a["median_s"] and b["median_s"] else None
    best = a["min_s"] / b["min_s"] if a["min_s"] and b["min_s"] else None
    return med, best


def verdicts(measured):
    out = {}

    def add(key, label, value, **details):
        text, op, bound = TARGETS[key]
        met = None if value is None else bool(value >= bound if op == ">=" else value <= bound)
        out[label] = {
            "target": f"{text} {op} {bound}",
            "value": None if value is None else round(value, 3),
            "met": met,
            **details,
        }

    t1 = measured["T1"]
    med, best = _speedup(t1["times"], "truncated", "shared")
    bound = t1["tokens"]["truncated"] / t1["tokens"]["shared"]
    add("T1", "T1", med, fastest_calls=_round(best), token_bound=round(bound, 3), tokens=t1["tokens"])
    for label, case in measured["steps"].items():
        med, best = _speedup(case["times"], "truncated", "shared")
        tokens = case["tokens"]
        bound = tokens["truncated"] / tokens["shared"] if tokens["shared"] else None
        text, _ = _speedup(case["text_times"], "truncated", "shared")
        add(
            label.split()[0], label, med, fastest_calls=_round(best), token_bound=_round(bound),
            text_only=_round(text), ceiling=_round(_ceiling(case)), tokens=tokens,
        )  # fmt: skip
    t4 = measured["T4"]
    total = t4["test_set_s"]
    value = _ratio(total["per_batch"].get("77-token"), total["cached"].get("shared"))
    tok, n = t4["tokens"], t4["test_batches"]
    image = IMAGE_POSITION_COST * tok["image_per_batch"]
    bound = n * (tok["per_batch_77"] + image) / (tok["cache_build_shared"] + n * image)
    add("T4", "T4", value, weighted_token_ratio=round(bound, 3), tokens=tok, test_batches=n)
    for key in ("M1", "M2", "M3"):
        row = measured["memory"]["rows"][key]
        value = None if row["peak_bytes"] is None else row["peak_bytes"] / GIB
        add(key, key, value, tokens=row["tokens"])
    return out


def _ceiling(case):
    """The step's speed-up if the text encoding cost nothing: truncated-only step time over
    that time less its text encoding (medians of the same alternation)."""
    step, text = case["times"]["truncated"]["median_s"], case["text_times"]["truncated"]["median_s"]
    return None if step is None or text is None or step <= text else step / (step - text)


def _ratio(a, b):
    return None if a is None or not b else a / b


def _round(value):
    return None if value is None else round(value, 3)
