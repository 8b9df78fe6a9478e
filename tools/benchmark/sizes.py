"""Dataset sizes (`--size eurosat|sun397`): each trainer's training step and a full test-set
evaluation at the size of a protocol's dataset, on the shared-prefix path and its references.

The dataset config gives the templates and MoCoOp's experts, the protocols' class count and
test-set size come from `build.SIZES`, the batches from the trainer configs. All classes are
trained and tested, as in the few-shot protocol (MoCoOp has no virtual classes then; its
training step encodes experts x classes prompts either way). An evaluation is timed on a few
test batches per path and extrapolated to the test set: the cached evaluation costs one cache
build plus every batch through the image tower, the per-batch one every batch with its text
encoding.
"""

import argparse
import math

from clipprompt.caching import CachedTextFeatures
from tools.benchmark.build import SIZES, classnames, encodes_prompts, learns, name_stats
from tools.benchmark.imagenet import encoding_bytes
from tools.benchmark.measure import round_robin
from tools.benchmark.paths import (
    PATHS,
    cache_build,
    eval_positions,
    evaluation,
    prompts_per_step,
    step_positions,
    train_step,
)
from tools.benchmark.table import elem_bytes, make_batch

SIZE_PATHS = ("shared", "truncated", "77-token")
# Training batch on a CPU: the configs' batches (32 to 128 images) would make the image tower
# all of a step there.
CPU_BATCH = 8


def size_table(args, device, bench, peak):
    """({trainer: measurements}, the inputs) at the dataset size `args.size`."""
    size = SIZES[args.size]
    names, source = classnames(args, args.classes + args.virtual)
    base, virtual = names[: args.classes], names[args.classes :]
    built, rows = {}, {}
    for name in args.trainers:
        built[name] = {"shared": bench.build(name, base, virtual, PATHS["shared"])}
        if encodes_prompts(built[name]["shared"]):
            built[name] |= {
                p: bench.build(name, base, virtual, PATHS[p]) for p in SIZE_PATHS if p != "shared"
            }
        cfg = built[name]["shared"].cfg
        batch = args.batch or cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if device.type == "cpu" and not args.batch:
            batch = min(batch, CPU_BATCH)
        eval_batch = args.eval_batch or cfg.DATALOADER.TEST.BATCH_SIZE
        rows[name] = {
            "trainer": cfg.TRAINER.NAME,
            "batch": batch,
            "eval_batch": eval_batch,
            "test_batches": math.ceil(size["test_images"] / eval_batch),
            "prompts_per_step": prompts_per_step(built[name]["shared"], batch),
            "tokens_per_step": {p: sum(step_positions(t, batch)) for p, t in built[name].items()},
            "eval_tokens_per_batch": {p: sum(eval_positions(t, eval_batch)) for p, t in built[name].items()},
        }
        print(f"built {name} ({', '.join(built[name])})", flush=True)
    time_size_steps(args, device, peak, built, rows, len(base))
    time_size_evaluation(args, device, peak, built, rows, len(base))
    for row in rows.values():
        row["test_set_s"] = test_set_seconds(row)
    inputs = {"base": base, "virtual": virtual, "names": {"source": source, **name_stats(names)}}
    return rows, {**inputs, "test_images": size["test_images"]}


def time_size_steps(args, device, peak, built, rows, classes):
    steps, estimates, batches = {}, {}, {}
    for name, variants in built.items():
        if not learns(variants["shared"]):
            continue
        batch = rows[name]["batch"]
        batches.setdefault(batch, make_batch(args, device, batch, classes))
        for path, trainer in variants.items():
            trainer.set_model_mode("train")
            steps[(name, path)] = train_step(trainer, batches[batch])
            estimates[(name, path)] = encoding_bytes(
                step_positions(trainer, batch), True, elem_bytes(args.prec)
            )
    for (name, path), res in round_robin(steps, args, device, peak, estimates).items():
        rows[name].setdefault("train_step", {})[path] = res
    print("training steps timed", flush=True)


def time_size_evaluation(args, device, peak, built, rows, classes):
    """Per trainer: a cached test batch (the shared path's cache; with the cache the text
    encoder does not run), and on every path a test batch without the cache and a cache build."""
    evals, estimates, images = {}, {}, {}
    elem = elem_bytes(args.prec)
    for name, variants in built.items():
        eval_batch = rows[name]["eval_batch"]
        images.setdefault(eval_batch, make_batch(args, device, eval_batch, classes, seed=1)["img"])
        image = images[eval_batch]
        for path, trainer in variants.items():
            trainer.set_model_mode("eval")
            cached = isinstance(trainer.model, CachedTextFeatures)
            per_image = not cached and encodes_prompts(trainer)  # prompts per image: no cache
            if path == "shared" and not per_image:
                evals[(name, "eval", path)] = evaluation(trainer, image, device)
            if cached or per_image:
                evals[(name, "per_batch", path)] = evaluation(trainer, image, device, cached=False)
                estimates[(name, "per_batch", path)] = encoding_bytes(
                    eval_positions(trainer, eval_batch), False, elem
                )
            if cached:
                evals[(name, "cache_build", path)] = cache_build(trainer)
                estimates[(name, "cache_build", path)] = estimates[(name, "per_batch", path)]
    timing = argparse.Namespace(**{**vars(args), "repeats": args.eval_repeats, "warmup": args.eval_warmup})
    for (name, kind, path), res in round_robin(evals, timing, device, peak, estimates).items():
        if kind == "eval":
            rows[name]["eval"] = res
        else:
            rows[name].setdefault(kind, {})[path] = res
    print("evaluation timed", flush=True)


def test_set_seconds(row):
    """The full test-set evaluation of each path, extrapolated from the timed batches: cached
    (one cache build + every batch with the cache) and per batch (every batch re-encoding);
    `default` is what the trainer runs by default (cached on the shared path; per batch for
    prompts that depend on the image, which cannot be cached)."""
    n = row["test_batches"]
    out = {"cached": {}, "per_batch": {}}
    cached_batch = row.get("eval", {}).get("median_s")
    for path, res in row.get("per_batch", {}).items():
        out["per_batch"][path] = None if res["median_s"] is None else n * res["median_s"]
    for path, res in row.get("cache_build", {}).items():
        build = res["median_s"]
        out["cached"][path] = None if build is None or cached_batch is None else build + n * cached_batch
    if "per_batch" not in row and cached_batch is not None:
        out["cached"]["shared"] = n * cached_batch  # fixed class features: nothing to encode
    out["default"] = out["cached"].get("shared", out["per_batch"].get("shared"))
    return out
