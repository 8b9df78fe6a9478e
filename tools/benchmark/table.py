"""The trainer table: each trainer's training step, evaluation and text encoding, each speed
option against its reference path, and the three targets."""

import argparse
import time

import torch

from clipprompt.caching import CachedTextFeatures
from clipprompt.text_encoder import transformer_calls
from tools.benchmark.build import REPO, TRAINERS, classnames, name_stats
from tools.benchmark.measure import round_robin, sync
from tools.protocols import trainer_config

# Reference path of each text-encoder speed option: the config overrides that select it.
REFERENCES = {
    "77-token": ["TRAINER.TEXT_ENCODER.TRUNCATE", "False"],
    "math": ["TRAINER.TEXT_ENCODER.ATTENTION", "math"],
}
TARGETS = {
    "a": ("CoOp text encoding, 77-token time / truncated time (forward + backward)", ">=", 3.0),
    "b": ("MoCoOp evaluation throughput / ZeroshotCLIP's", ">=", 0.9),
    "c": ("MoCoOp step time / ((MoCoOp tokens / CoOp tokens) x CoOp step time)", "<=", 1.2),
}


def prompt_encoder(trainer, image_features):
    """The trainer's text encoding of one training step (None for ZeroshotCLIP)."""
    model, name = trainer.model, trainer.cfg.TRAINER.NAME
    if name == "ZeroshotCLIP":
        return None
    if name == "MoCoOp":
        return model.soft_features  # every expert x every text class
    if name == "CoCoOp":
        return lambda: model.text_features(image_features)  # batch x classes
    return model.compute_text_features


def encoded_tokens(trainer, batch):
    """Sequence positions the text transformer runs in one training step (padding included)."""
    name = trainer.cfg.TRAINER.NAME
    if name == "ZeroshotCLIP":
        return 0
    assembler = trainer.model.prompt_learner.assembler
    eot, length = assembler.eot, assembler.token_ids.shape[1]
    if name == "CoCoOp":
        eot = eot.repeat(batch)
    return sum(call_positions(eot, length, trainer.cfg.TRAINER.TEXT_ENCODER.CHUNK_SIZE))


def call_positions(eot, length, chunk):
    """Sequence positions of each transformer call TextEncoder makes for these rows."""
    return [len(rows) * width for rows, width in transformer_calls(eot, length, chunk)]


def fwd_bwd(trainer, encode):
    def run():
        trainer.model.zero_grad(set_to_none=True)
        with trainer.autocast():
            feats = encode()
        feats.float().sum().backward()

    return run


def fwd(trainer, encode):
    def run():
        with torch.no_grad(), trainer.autocast():
            encode()

    return run


def train_step(trainer, batch):
    return lambda: trainer.forward_backward(batch)


def evaluation(trainer, image, device, cached=True):
    """`model_inference` as `test()` runs it; with the cache, only the inference is timed."""
    caches = cached and isinstance(trainer.model, CachedTextFeatures)

    def run():
        with torch.no_grad():
            if not caches:
                trainer.model_inference(image)
                return None
            with trainer.model.cached_text_features():
                sync(device)
                start = time.perf_counter()
                trainer.model_inference(image)
                sync(device)
                return time.perf_counter() - start

    return run


def cache_build(trainer):
    def run():
        with torch.no_grad():
            trainer.model.compute_text_features()

    return run


# ----------------------------------------------------------------------------- the trainer table


def trainer_table(args, device, bench, peak):
    """({trainer: measurements}, the paired evaluation of target (b), the inputs), in the order:
    build, text encoding per option, training steps, evaluation."""
    base = classnames(args, args.classes + args.virtual)
    base, virtual = base[: args.classes], base[args.classes :]
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    label = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    eval_image = torch.randn(args.eval_batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    batch = {"img": image, "label": label}

    built, rows = {}, {}
    for name in args.trainers:
        built[name], rows[name] = build_variants(args, bench, name, base, virtual)
        print(f"built {name} ({', '.join(built[name])})", flush=True)
    time_text_encoding(args, device, peak, built, rows, image)

    steps = {n: train_step(v["default"], batch) for n, v in built.items() if n != "ZeroshotCLIP"}
    for name in steps:
        built[name]["default"].set_model_mode("train")
    for name, res in round_robin(steps, args, device, peak).items():
        rows[name]["train_step"] = res
    print("training steps timed", flush=True)

    paired = time_evaluation(args, device, peak, built, rows, eval_image)
    return rows, paired, {"base": base, "virtual": virtual, "names": name_stats(base + virtual)}


def build_variants(args, bench, name, base, virtual):
    """({variant: trainer}, the trainer's row): the default speed options and, for trainers
    whose options are compared, each reference path."""
    trainer_name, config, compared = TRAINERS[name]
    variants = {"default": []}
    if compared:
        variants.update(REFERENCES)
    built = {v: bench.build(name, base, virtual, opts) for v, opts in variants.items()}
    trainer = built["default"]
    enc = trainer.cfg.TRAINER.TEXT_ENCODER
    row = {
        "trainer": trainer.cfg.TRAINER.NAME,
        "config": trainer_config(trainer_name, config, args.dataset, REPO),
        "text_encoder": {k: enc[k] for k in ("TRUNCATE", "ATTENTION", "CHUNK_SIZE", "CHECKPOINT")},
        "tokens_per_step": {v: encoded_tokens(t, args.batch) for v, t in built.items()},
        "prompts_per_step": prompts_per_step(trainer, args.batch),
    }
    return built, row


def time_text_encoding(args, device, peak, built, rows, image):
    """Each speed option against its reference path, on one training step's text encoding."""
    with torch.no_grad():
        feats = {n: v["default"].model.encode_image(image) for n, v in built.items() if n != "ZeroshotCLIP"}
    for name, variants in built.items():
        if len(variants) == 1:
            continue  # no option to compare (ZeroshotCLIP, MoCoOp-release)
        for t in variants.values():
            t.set_model_mode("train")
        encoders = {v: prompt_encoder(t, feats[name]) for v, t in variants.items()}
        rows[name]["text_fwd_bwd"] = round_robin(
            {v: fwd_bwd(variants[v], e) for v, e in encoders.items()}, args, device, peak
        )
        if name == "CoOp" or args.forward:
            rows[name]["text_fwd"] = round_robin(
                {v: fwd(variants[v], e) for v, e in encoders.items()}, args, device, peak
            )
        print(f"text encoding timed: {name}", flush=True)


def time_evaluation(args, device, peak, built, rows, eval_image):
    """Cached and per-batch evaluation and the cache build of every trainer; returns the longer
    alternation of ZeroshotCLIP's and MoCoOp's evaluation for target (b) ({} without them)."""
    evals = {}
    for name, variants in built.items():
        trainer = variants["default"]
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
    if "ZeroshotCLIP" not in built or "MoCoOp" not in built:
        return {}
    # Target (b) compares two nearly equal costs: a longer alternation of just these two.
    longer = argparse.Namespace(**{**vars(args), "repeats": 3 * args.repeats, "warmup": 0})
    paired = round_robin({n: evals[(n, "eval")] for n in ("ZeroshotCLIP", "MoCoOp")}, longer, device, peak)
    print("ZeroshotCLIP / MoCoOp evaluation timed in alternation", flush=True)
    return paired


def prompts_per_step(trainer, batch):
    if trainer.cfg.TRAINER.NAME == "ZeroshotCLIP":
        return 0
    rows = trainer.model.prompt_learner.assembler.num_rows
    return rows * batch if trainer.cfg.TRAINER.NAME == "CoCoOp" else rows


def ratio(a, b):
    return None if a is None or not b else a / b


def targets(rows, paired=None):
    out = {}

    def add(key, value, **extra):
        text, op, bound = TARGETS[key]
        met = None if value is None else bool(value >= bound if op == ">=" else value <= bound)
        out[key] = {
            "target": f"{text} {op} {bound}",
            "value": None if value is None else round(value, 3),
            "met": met,
            **extra,
        }

    if "CoOp" in rows:
        coop = rows["CoOp"]
        fwd = ratio(coop["text_fwd"]["77-token"]["median_s"], coop["text_fwd"]["default"]["median_s"])
        add(
            "a",
            ratio(coop["text_fwd_bwd"]["77-token"]["median_s"], coop["text_fwd_bwd"]["default"]["median_s"]),
            forward_only=fwd and round(fwd, 3),
            token_ratio=round(coop["tokens_per_step"]["77-token"] / coop["tokens_per_step"]["default"], 3),
        )
    if "MoCoOp" in rows and "ZeroshotCLIP" in rows:
        if paired:
            zs, moc = paired["ZeroshotCLIP"], paired["MoCoOp"]
            add(
                "b",
                ratio(zs["median_s"], moc["median_s"]),
                calls=len(zs["times_s"]),
                best_calls=round(ratio(zs["min_s"], moc["min_s"]), 3),
            )
        else:
            add(
                "b",
                ratio(rows["MoCoOp"]["eval"]["images_per_s"], rows["ZeroshotCLIP"]["eval"]["images_per_s"]),
            )
    if "MoCoOp" in rows and "CoOp" in rows:
        moc, coop = rows["MoCoOp"], rows["CoOp"]
        token_ratio = moc["tokens_per_step"]["default"] / coop["tokens_per_step"]["default"]
        step_ratio = ratio(moc["train_step"]["median_s"], coop["train_step"]["median_s"])
        # The same bound on the text encoding alone (the image tower costs both the same).
        text_ratio = ratio(
            ratio(
                moc.get("text_fwd_bwd", {}).get("default", {}).get("median_s"),
                coop.get("text_fwd_bwd", {}).get("default", {}).get("median_s"),
            ),
            token_ratio,
        )
        add(
            "c",
            ratio(step_ratio, token_ratio),
            token_ratio=round(token_ratio, 3),
            step_ratio=step_ratio and round(step_ratio, 3),
            text_only=text_ratio and round(text_ratio, 3),
        )
    return out
