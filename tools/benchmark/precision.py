"""`--suite precision`: `TRAINER.PREC` against fp32 (on a CPU: amp, i.e. bf16 autocast) for the
training step and the evaluation of every trainer, with the loss terms of both computed from the
same parameters on the same batch (every term present and finite, and how far each moved)."""

import math

import torch

from clipprompt.caching import CachedTextFeatures
from clipprompt.learnable import learnable_state, load_learnable
from tools.benchmark.build import classnames, learns, name_stats
from tools.benchmark.measure import round_robin
from tools.benchmark.paths import cache_build, evaluation, train_step
from tools.benchmark.table import make_batch


def run_precision(args, device, bench, peak, precs=("fp32", "amp")):
    """{trainer: {prec: times and peaks}, "losses": {...}}, and the inputs."""
    names, source = classnames(args, args.classes + args.virtual)
    base, virtual = names[: args.classes], names[args.classes :]
    batch = make_batch(args, device, args.batch, args.classes)
    eval_image = make_batch(args, device, args.eval_batch, args.classes, seed=1)["img"]
    built = {}
    for name in args.trainers:
        built[name] = {p: bench.build(name, base, virtual, ["TRAINER.PREC", p]) for p in precs}
        same_learnable(built[name])
        print(f"built {name} ({', '.join(precs)})", flush=True)
    rows = {name: {"losses": loss_parity(variants, batch)} for name, variants in built.items()}

    steps, evals = {}, {}
    for name, variants in built.items():
        for prec, trainer in variants.items():
            if learns(trainer):
                steps[(name, prec)] = train_step(trainer, batch)
            evals[(name, prec, "eval")] = evaluation(trainer, eval_image, device)
            if isinstance(trainer.model, CachedTextFeatures):
                evals[(name, prec, "cache_build")] = cache_build(trainer)
    for trainer in (t for v in built.values() for t in v.values()):
        trainer.set_model_mode("train")
    for (name, prec), res in round_robin(steps, args, device, peak).items():
        rows[name].setdefault("train_step", {})[prec] = res
    print("training steps timed", flush=True)
    for trainer in (t for v in built.values() for t in v.values()):
        trainer.set_model_mode("eval")
    for (name, prec, kind), res in round_robin(evals, args, device, peak).items():
        rows[name].setdefault(kind, {})[prec] = res
    print("evaluation timed", flush=True)
    inputs = {"base": base, "virtual": virtual, "names": {"source": source, **name_stats(names)}}
    return rows, {**inputs, "precs": list(precs)}


def same_learnable(variants):
    """Give every variant the first one's learnable tensors (random context, gates)."""
    first, *others = variants.values()
    state = learnable_state(first.model)
    for trainer in others:
        load_learnable(trainer.model, state, "the first variant's model")


@torch.no_grad()
def loss_parity(variants, batch):
    """The loss terms of one batch in each mode (as `forward_backward` computes them, without
    the update), and how far each term moved from the first mode's, relative to the first
    mode's whole loss (a term near 0, such as KgCoOp's 1 - cos, has no scale of its own)."""
    terms = {}
    for prec, trainer in variants.items():
        trainer.set_model_mode("train")
        image, label = trainer.parse_batch_train(batch)
        with trainer.autocast():
            values, _, _ = trainer.model.losses(image, label)
        terms[prec] = {k: float(v.float()) for k, v in values.items()}
    first, *others = terms
    scale = max(sum(abs(v) for v in terms[first].values()), 1e-12)
    out = {"terms": terms, "relative_difference": {}, "all_terms_finite": True}
    for prec in others:
        out["relative_difference"][prec] = {
            k: abs(terms[prec].get(k, math.nan) - v) / scale for k, v in terms[first].items()
        }
        same_terms = set(terms[prec]) == set(terms[first])
        finite = all(math.isfinite(v) for v in terms[prec].values())
        out["all_terms_finite"] = out["all_terms_finite"] and same_terms and finite
    return out
