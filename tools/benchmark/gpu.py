"""`--suite gpu`: the CUDA numbers docs/PERFORMANCE.md still lacks, in one run of a few
minutes (planned to stay under 8 on one H200):

1. every trainer's training step, time and peak memory, at PREC fp16 and amp, at SUN397's sizes
   (397 classes, 4 MoCoOp experts) with the configs' training batches, and its cached
   evaluation of a test batch (the configs' 100 images);
2. MoCoOp at ImageNet scale (20 experts, 500 + 500 text classes, batch 32, fp16): the memory
   model's estimate against the measured peak of a step, for each memory option, with and
   without the shared prefix (`imagenet.imagenet_scale`);
3. amp against fp32 (and fp16 against fp32): the loss terms of every trainer from the same
   parameters on the same batch.

`--toy` runs all of it on a tiny CLIP at toy sizes (on a CPU too), to test the script.
"""

import argparse

from tools.benchmark.build import SIZES, classnames, learns, name_stats
from tools.benchmark.imagenet import IMAGENET, imagenet_scale
from tools.benchmark.measure import round_robin
from tools.benchmark.paths import evaluation, step_positions, train_step
from tools.benchmark.precision import loss_parity, same_learnable
from tools.benchmark.table import make_batch

PRECS = ("fp16", "amp")
TOY_IMAGENET = {"experts": 2, "classes": 2, "virtual": 2, "batch": 1}


def run_gpu(args, device, bench, peak, weight_bytes):
    sub = argparse.Namespace(**{**vars(args), "dataset": "sun397", "experts": None})
    classes = 3 if args.toy else SIZES["sun397"]["classes"]
    names, source = classnames(sub, classes)
    return {
        "inputs": {"dataset": "sun397", "names": {"source": source, **name_stats(names)}},
        "trainers": trainer_steps(args, sub, device, bench, peak, names),
        "loss_parity": parity(args, sub, device, bench, names),
        "imagenet": imagenet_part(args, device, bench, peak, weight_bytes),
    }


def trainer_steps(args, sub, device, bench, peak, names):
    steps, evals, rows, data, images = {}, {}, {}, {}, {}
    for name in args.trainers:
        for prec in PRECS:
            trainer = bench.build(name, names, [], ["TRAINER.PREC", prec], sub)
            cfg = trainer.cfg
            batch = 1 if args.toy else cfg.DATALOADER.TRAIN_X.BATCH_SIZE
            eval_batch = 1 if args.toy else cfg.DATALOADER.TEST.BATCH_SIZE
            data.setdefault(batch, make_batch(sub, device, batch, len(names)))
            images.setdefault(eval_batch, make_batch(sub, device, eval_batch, len(names), seed=1)["img"])
            row = rows.setdefault(name, {"batch": batch, "eval_batch": eval_batch})
            row.setdefault("tokens_per_step", {})[prec] = sum(step_positions(trainer, batch))
            if learns(trainer):
                trainer.set_model_mode("train")
                steps[(name, prec)] = train_step(trainer, data[batch])
            evals[(name, prec)] = (trainer, evaluation(trainer, images[eval_batch], device))
        print(f"built {name} ({', '.join(PRECS)})", flush=True)
    for (name, prec), res in round_robin(steps, args, device, peak).items():
        rows[name].setdefault("train_step", {})[prec] = res
    print("training steps timed", flush=True)
    for trainer, _ in evals.values():
        trainer.set_model_mode("eval")
    timed = round_robin({k: fn for k, (_, fn) in evals.items()}, args, device, peak)
    for (name, prec), res in timed.items():
        rows[name].setdefault("eval", {})[prec] = res
    print("evaluation timed", flush=True)
    return rows


def parity(args, sub, device, bench, names):
    out = {}
    batch = make_batch(sub, device, 1 if args.toy else 8, len(names))
    for name in args.trainers:
        variants = {
            p: bench.build(name, names, [], ["TRAINER.PREC", p], sub) for p in ("fp32", "fp16", "amp")
        }
        same_learnable(variants)
        out[name] = loss_parity(variants, batch)
        del variants
    print("loss parity computed", flush=True)
    return out


def imagenet_part(args, device, bench, peak, weight_bytes):
    scale = IMAGENET if device.type == "cuda" and not args.toy else TOY_IMAGENET
    sub = argparse.Namespace(
        **{**vars(args), **scale, "dataset": "imagenet", "prec": "fp16" if device.type == "cuda" else "fp32"}
    )
    sub.repeats, sub.warmup = 1, 1
    return imagenet_scale(sub, device, bench, peak, weight_bytes)
