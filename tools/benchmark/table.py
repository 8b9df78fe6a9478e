"""The trainer table (`--size default`): each trainer's text encoding on every text-encoder
path, its training step with and without the shared prefix, and its evaluation with and
without the text-feature cache."""

import torch

from clipprompt.caching import CachedTextFeatures
from tools.benchmark.build import REPO, TRAINERS, classnames, encodes_prompts, learns, name_stats
from tools.benchmark.imagenet import encoding_bytes
from tools.benchmark.measure import round_robin
from tools.benchmark.paths import (
    PATHS,
    cache_build,
    evaluation,
    fwd,
    fwd_bwd,
    prompt_encoder,
    prompts_per_step,
    step_positions,
    train_step,
)
from tools.protocols import trainer_config

# Training steps are compared on the path that was the default before the shared prefix; the
# other references differ from it in the text encoding only, which the table times on its own.
STEP_PATHS = ("shared", "truncated")


def make_batch(args, device, batch, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    return {"img": image, "label": torch.randint(0, classes, (batch,), generator=gen).to(device)}


def elem_bytes(prec):
    return 2 if prec == "fp16" else 4


def trainer_table(args, device, bench, peak):
    """({trainer: measurements}, the inputs), in the order: build, text encoding per path,
    training steps, evaluation."""
    names, source = classnames(args, args.classes + args.virtual)
    base, virtual = names[: args.classes], names[args.classes :]
    batch = make_batch(args, device, args.batch, args.classes)
    eval_image = make_batch(args, device, args.eval_batch, args.classes, seed=1)["img"]

    built, rows = {}, {}
    for name in args.trainers:
        built[name], rows[name] = build_paths(
            args, bench, name, base, virtual, PATHS if TRAINERS[name][2] else STEP_PATHS
        )
        print(f"built {name} ({', '.join(built[name])})", flush=True)
    time_text_encoding(args, device, peak, built, rows, batch["img"])
    time_steps(args, device, peak, built, rows, batch)
    time_evaluation(args, device, peak, built, rows, eval_image)
    inputs = {"base": base, "virtual": virtual, "names": {"source": source, **name_stats(names)}}
    return rows, inputs


def build_paths(args, bench, name, base, virtual, paths):
    """({path: trainer}, the trainer's row): the trainer built on each text-encoder path (on the
    default one only when it encodes no soft prompt)."""
    trainer_name, config, _ = TRAINERS[name]
    trainer = bench.build(name, base, virtual, PATHS["shared"])
    built = {"shared": trainer}
    if encodes_prompts(trainer):
        built |= {p: bench.build(name, base, virtual, PATHS[p]) for p in paths if p != "shared"}
    enc = trainer.cfg.TRAINER.TEXT_ENCODER
    row = {
        "trainer": trainer.cfg.TRAINER.NAME,
        "config": trainer_config(trainer_name, config, args.dataset, REPO),
        "text_encoder": {
            k: enc[k] for k in ("TRUNCATE", "SHARE_PREFIX", "ATTENTION", "CHUNK_SIZE", "CHECKPOINT")
        },
        "tokens_per_step": {p: sum(step_positions(t, args.batch)) for p, t in built.items()},
        "prompts_per_step": prompts_per_step(trainer, args.batch),
    }
    return built, row


def time_text_encoding(args, device, peak, built, rows, image):
    """Every path of a trainer's text encoding of one training step, in alternation."""
    with torch.no_grad():
        feats = {n: v["shared"].model.encode_image(image) for n, v in built.items()}
    for name, variants in built.items():
        if not TRAINERS[name][2] or not encodes_prompts(variants["shared"]):
            continue  # no soft prompt, or one encoded exactly as another row's
        for t in variants.values():
            t.set_model_mode("train")
        encoders = {p: prompt_encoder(t, feats[name]) for p, t in variants.items()}
        elem = elem_bytes(args.prec)
        estimates = {
            p: encoding_bytes(step_positions(t, args.batch), True, elem) for p, t in variants.items()
        }
        rows[name]["text_fwd_bwd"] = round_robin(
            {p: fwd_bwd(variants[p], e) for p, e in encoders.items()}, args, device, peak, estimates
        )
        if args.forward:
            rows[name]["text_fwd"] = round_robin(
                {p: fwd(variants[p], e) for p, e in encoders.items()}, args, device, peak
            )
        print(f"text encoding timed: {name}", flush=True)


def time_steps(args, device, peak, built, rows, batch):
    """Training steps (`forward_backward`) of every trainer on STEP_PATHS, in one alternation."""
    steps = {}
    for name, variants in built.items():
        if not learns(variants["shared"]):
            continue
        for path in STEP_PATHS:
            variants[path].set_model_mode("train")
            steps[(name, path)] = train_step(variants[path], batch)
    for (name, path), res in round_robin(steps, args, device, peak).items():
        rows[name].setdefault("train_step", {})[path] = res
    print("training steps timed", flush=True)


def time_evaluation(args, device, peak, built, rows, eval_image):
    """Cached and per-batch evaluation and the cache build of every trainer (shared path)."""
    evals = {}
    for name, variants in built.items():
        trainer = variants["shared"]
        trainer.set_model_mode("eval")
        evals[(name, "eval")] = evaluation(trainer, eval_image, device)
        if isinstance(trainer.model, CachedTextFeatures):
            evals[(name, "per_batch")] = evaluation(trainer, eval_image, device, cached=False)
            evals[(name, "cache_build")] = cache_build(trainer)
    for (name, kind), res in round_robin(evals, args, device, peak).items():
        if kind != "cache_build":
            res["images_per_s"] = ratio(args.eval_batch, res["median_s"])
        rows[name][kind] = res
    print("evaluation timed", flush=True)


def ratio(a, b):
    return None if a is None or not b else a / b
