"""Speed and memory of the trainers' real training and evaluation paths, and of each speed option.

    python -m tools.benchmark [--device cpu|cuda] [--classes C] [--virtual V] [--experts G]
        [--batch B] [--eval-batch E] [--prec fp32|fp16|amp] [--repeats N] [--threads T]
        [--trainers CoOp MoCoOp ...] [--dataset oxford_pets] [--forward] [--json out.json]
    python -m tools.benchmark --scale imagenet [--device cuda]

Every model is a real trainer: the config comes from `trainers.make_cfg` (the dataset config and
the trainer config the protocol scripts use, per-dataset files included) and the model from
the trainer's own `build_model`, with CLIP ViT-B/16's architecture and random weights loaded
through `MODEL.BACKBONE.NAME`. Only Dassl's data loaders are left out: the trainer is given
the class names directly and fed random images. Class names are generated (1-3 words, rare
words split into several BPE tokens; `--classnames-file` takes a real list) and the templates
are the dataset config's, so prompt lengths are realistic.

Per trainer: the time of a training step (`forward_backward`: forward, losses, backward,
optimiser step); evaluation throughput through `model_inference`, with the text features
cached as `PromptTrainer.test` caches them; peak memory above the memory in use before the
call (CUDA: `torch.cuda.max_memory_allocated`; CPU: the peak resident set size VmHWM, reset
through /proc/self/clear_refs, with large allocations mmapped so that it tracks live memory;
see `PeakMemory`). Each speed option is compared with its reference path on the trainer's text
encoding of one training step (forward and backward; forward only with --forward, always for
CoOp): truncated vs 77-token prompts (`TRAINER.TEXT_ENCODER.TRUNCATE`), fused vs math
attention (`TRAINER.TEXT_ENCODER.ATTENTION`); and cached vs per-batch evaluation (text features
recomputed for every test batch, as CoOp-family code does). Paths that are compared run
round-robin in one process after a warm-up round, so a change of machine load hits them alike;
the median and the fastest call are reported, and memory is taken on the first timed call.
The script ends with three targets: (a) CoOp's text encoding >= 3x faster truncated than at 77
tokens; (b) MoCoOp's evaluation throughput >= 0.9x ZeroshotCLIP's (timed in a longer
alternation of the two); (c) MoCoOp's step time <= 1.2x CoOp's times the ratio of their
encoded token positions.

`--scale imagenet`: MoCoOp at ImageNet scale (20 experts, 500 base + 500 virtual text classes,
batch 32): token counts from the real prompt assembler, an analytic memory estimate (saved
activations per token and layer, checked against autograd's saved tensors), and measured peak
memory of a training step with and without `CHUNK_SIZE` / `CHECKPOINT` (full scale on a GPU;
on a CPU at a reduced scale given by --experts/--classes/--virtual/--batch).
"""

import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import os
import platform
import random
import statistics
import tempfile
import time

import torch
from tabulate import tabulate

import trainers
from clipprompt.caching import CachedTextFeatures
from clipprompt.clip_loading import build_tiny_clip, convert_weights, load_clip, save_clip_state_dict
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import _TOKENIZER, PromptForm, bpe, clean_classname
from clipprompt.text_encoder import TextEncoder, transformer_calls

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20
GIB = 2**30

# CLIP ViT-B/16's architecture (what clip.model.build_model reads from the OpenAI checkpoint).
VIT_B16 = {
    "embed_dim": 512,
    "image_resolution": 224,
    "vision_layers": 12,
    "vision_width": 768,
    "vision_patch_size": 16,
    "transformer_width": 512,
    "transformer_layers": 12,
}

# Benchmark row -> (trainer, trainer config as the protocol scripts name it, compare options).
# MoCoOp-release encodes its prompts exactly as MoCoOp (paper) does: its option comparisons
# would repeat MoCoOp's.
TRAINERS = {
    "ZeroshotCLIP": ("ZeroshotCLIP", "vit_b16", False),
    "CoOp": ("CoOp", "vit_b16_ep50", True),
    "KgCoOp": ("KgCoOp", "vit_b16_ep100_ctxv1", True),
    "CoCoOp": ("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", True),
    "MoCoOp": ("MoCoOp", "paper_vit_b16_ep25", True),
    "MoCoOp-release": ("MoCoOp", "release_vit_b16_ep25", False),
    "MoPD": ("MoPD", "vit_b16_c4_bs128", True),
}
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
# ImageNet: 20 expert groups in configs/datasets/imagenet.yaml, 1000 classes (500 base + 500 new).
IMAGENET = {"experts": 20, "classes": 500, "virtual": 500, "batch": 32}
IMAGENET_CPU = {"experts": 4, "classes": 25, "virtual": 25, "batch": 4}
GPU_MEMORY = 80 * 10**9
# Share of the GPU an estimate may fill: the rest is left to the CUDA context, cuBLAS/cuDNN
# workspaces and allocator fragmentation.
GPU_BUDGET = 0.85


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--scale",
        choices=("default", "imagenet"),
        default="default",
        help="imagenet: MoCoOp's memory at ImageNet scale instead of the trainer table",
    )
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    p.add_argument(
        "--dataset",
        default="oxford_pets",
        help="configs/datasets/<name>.yaml: templates and experts (default oxford_pets; "
        "imagenet scale: imagenet)",
    )
    p.add_argument(
        "--classes", type=int, help="classes to classify (default 10; imagenet scale: 500, 25 on a CPU)"
    )
    p.add_argument(
        "--virtual",
        type=int,
        help="MoCoOp's extra (virtual) text classes, as in base-to-new "
        "training (default: --classes; 0 = none)",
    )
    p.add_argument(
        "--experts",
        type=int,
        help="MoCoOp experts: the first G template groups of the dataset "
        "(default: all; imagenet scale on a CPU: 4)",
    )
    p.add_argument("--batch", type=int, help="training batch (default 4; imagenet scale: 32, 4 on a CPU)")
    p.add_argument("--eval-batch", type=int, help="evaluation batch (default: --batch)")
    p.add_argument(
        "--prec",
        choices=("fp32", "fp16", "amp"),
        help="TRAINER.PREC (default: fp32 on a CPU, the configs' fp16 on CUDA)",
    )
    p.add_argument(
        "--repeats", type=int, help="timed repetitions (median reported; default 3, imagenet scale 1)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--image-size", type=int, default=224, help="image side (ViT-B/16: 224)")
    p.add_argument(
        "--classnames-file",
        help="class names, one per line ('<wnid> <name>' lines as in "
        "ImageNet's classnames.txt are accepted); default: generated names",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        help="imagenet scale: the CHUNK_SIZE measured against 0 (default: one expert's text classes)",
    )
    p.add_argument(
        "--forward",
        action="store_true",
        help="also time the options on forward-only text encoding for every trainer (default: CoOp only)",
    )
    p.add_argument("--json", help="result file (default: output/benchmark/<scale>_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    imagenet = args.scale == "imagenet"
    small = IMAGENET_CPU if args.device == "cpu" else IMAGENET
    defaults = {
        "classes": small["classes"] if imagenet else 10,
        "batch": small["batch"] if imagenet else 4,
        "repeats": 1 if imagenet else 3,
        "prec": "fp32" if args.device == "cpu" else "fp16",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if imagenet:
        if args.dataset == "oxford_pets":
            args.dataset = "imagenet"
        if args.experts is None:
            args.experts = small["experts"]
    if args.virtual is None:
        args.virtual = args.classes
    if args.eval_batch is None:
        args.eval_batch = args.batch
    if (
        min(args.classes, args.batch, args.eval_batch, args.repeats) < 1
        or args.virtual < 0
        or args.warmup < 0
    ):
        p.error(
            "--classes, --batch, --eval-batch and --repeats must be positive, --virtual and --warmup >= 0"
        )
    return args


# ----------------------------------------------------------------------------- inputs


def generated_classnames(n, seed=0):
    """`n` distinct class names of 1-3 words; a word is a common BPE word or a rare one made of
    a stem and an ending (two or more BPE tokens, as in "bedlington terrier")."""
    pieces = list(_TOKENIZER.encoder)[1000:30000]
    words = [
        p[:-4] for p in pieces if p.endswith("</w>") and p[:-4].isascii() and p[:-4].isalpha() and len(p) > 6
    ]
    stems = [p for p in pieces if not p.endswith("</w>") and p.isascii() and p.isalpha() and len(p) > 2]
    rng = random.Random(seed)
    names, seen = [], set()
    while len(names) < n:
        count = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
        name = " ".join(
            rng.choice(words) if rng.random() < 0.6 else rng.choice(stems) + rng.choice(words)
            for _ in range(count)
        )
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def read_classnames(path):
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    first = [line.split(" ", 1)[0] for line in lines]
    if all(w[:1] == "n" and w[1:].isdigit() and " " in line for w, line in zip(first, lines)):
        lines = [line.split(" ", 1)[1] for line in lines]  # ImageNet's "<wnid> <name>"
    return lines


def classnames(args, total):
    names = read_classnames(args.classnames_file) if args.classnames_file else generated_classnames(total)
    if len(set(names)) < total:
        raise ValueError(
            f"--classnames-file {args.classnames_file} has {len(set(names))} distinct names; "
            f"{total} are needed (--classes + --virtual)"
        )
    return list(dict.fromkeys(names))[:total]


def name_stats(names):
    counts = [len(bpe(clean_classname(n))) for n in names]
    return {
        "mean_bpe_tokens": round(statistics.mean(counts), 2),
        "max_bpe_tokens": max(counts),
        "examples": names[:5],
    }


def trainer_config_file(trainer, config, dataset):
    """The per-dataset trainer config when it exists, else the shared one (as scripts/_common.sh)."""
    per = os.path.join(REPO, "configs", "trainers", trainer, config, f"{dataset}.yaml")
    return (
        per if os.path.isfile(per) else os.path.join(REPO, "configs", "trainers", trainer, config + ".yaml")
    )


def dataset_file(dataset):
    path = os.path.join(REPO, "configs", "datasets", f"{dataset}.yaml")
    if not os.path.isfile(path):
        raise ValueError(f"--dataset {dataset}: {path} does not exist")
    return path


def expert_groups(dataset, experts=None):
    """(group sizes, flat templates) of the first `experts` expert groups of a dataset config."""
    prompts = trainers.read_config_file(dataset_file(dataset))["DATASET"]["PROMPTS"]
    sizes, templates = list(prompts["EXPERT_GROUPS"]), list(prompts["EXPERT_TEMPLATES"])
    experts = experts or len(sizes)
    if not 1 <= experts <= len(sizes):
        raise ValueError(
            f"--experts {experts}: configs/datasets/{dataset}.yaml has {len(sizes)} expert groups"
        )
    return sizes[:experts], templates[: sum(sizes[:experts])]


def expert_subset(dataset, experts):
    """Config overrides keeping the first `experts` template groups of the dataset's experts."""
    sizes, templates = expert_groups(dataset, experts)
    return ["DATASET.PROMPTS.EXPERT_GROUPS", repr(sizes), "DATASET.PROMPTS.EXPERT_TEMPLATES", repr(templates)]


def make_cfg(name, args, clip_path, opts=()):
    trainer, config, _ = TRAINERS[name]
    extra = expert_subset(args.dataset, args.experts) if trainer == "MoCoOp" and args.experts else []
    options = [
        "MODEL.BACKBONE.NAME", clip_path, "TRAINER.PREC", args.prec, "INPUT.SIZE",
        f"({args.image_size}, {args.image_size})", "USE_CUDA", str(args.device == "cuda"), *extra, *opts,
    ]  # fmt: skip
    return trainers.make_cfg(
        trainer, dataset_file(args.dataset), trainer_config_file(trainer, config, args.dataset), options
    )


# ----------------------------------------------------------------------------- measuring


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


# glibc's mallopt parameter number.
M_MMAP_THRESHOLD = -3


class PeakMemory:
    """Peak memory of one call above the memory in use before it, in bytes (None if unknown).

    On a CPU: the peak resident set size (VmHWM, reset through /proc/self/clear_refs). glibc
    serves large allocations from its heap, where freed tensors stay resident and are reused
    unevenly, so the peak RSS would add heap fragmentation to the tensors' peak. Created before
    any model, this object therefore has glibc mmap every allocation of 64 KiB or more for the
    whole run: freed tensors leave the RSS at once (the page faults this costs are about 1% of
    a step here).
    """

    def __init__(self, device):
        self.device = device
        self._libc = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated above memory_allocated before the call"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status("VmHWM")
        except (OSError, KeyError):
            self.method = None  # not Linux, or /proc/self/clear_refs is not writable
            return
        self.method = "peak RSS (VmHWM reset via /proc/self/clear_refs) above the RSS before the call"
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            if libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024) == 1:
                self._libc = libc
                self.method += "; glibc mmaps allocations >= 64 KiB (mallopt), so the RSS tracks live memory"

    def __call__(self, fn):
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            result = fn()
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - base, result
        if self.method is None:
            return None, fn()
        if self._libc is not None:
            self._libc.malloc_trim(0)  # small freed blocks leave the RSS before the baseline
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status("VmRSS")
        result = fn()
        return _status("VmHWM") - base, result


def timed(fn, device):
    """Seconds of one call; a callable may return its own measured seconds (e.g. excluding set-up)."""
    sync(device)
    start = time.perf_counter()
    own = fn()
    sync(device)
    return own if isinstance(own, float) else time.perf_counter() - start


def round_robin(fns, args, device, peak):
    """Time competing callables in turns: `warmup` untimed rounds, then `repeats` timed rounds,
    each in a rotated order; the first timed round also measures peak memory (after the
    warm-up, so one-time allocations of a first call are not counted). A callable that runs out
    of device memory is marked `oom` and left out from then on."""
    out = {name: {"peak_bytes": None, "times_s": [], "oom": False} for name in fns}
    live = dict(fns)

    def call(name, how):
        try:
            return how()
        except torch.OutOfMemoryError:
            out[name]["oom"] = True
            del live[name]
        # Outside the except block: its traceback no longer holds the failed call's tensors.
        gc.collect()
        torch.cuda.empty_cache()
        return None

    for _ in range(args.warmup):
        for name, fn in list(live.items()):
            call(name, fn)
    for r in range(args.repeats):
        names = list(live)
        for name in names[r % max(len(names), 1) :] + names[: r % max(len(names), 1)]:
            if name not in live:
                continue
            fn = live[name]
            if r == 0:
                res = call(name, lambda fn=fn: peak(lambda: timed(fn, device)))
                if res is not None:
                    out[name]["peak_bytes"], seconds = res
            else:
                seconds = call(name, lambda fn=fn: timed(fn, device))
            if name in live:
                out[name]["times_s"].append(seconds)
    for res in out.values():
        res["median_s"] = statistics.median(res["times_s"]) if res["times_s"] else None
        # The least disturbed call: on a shared machine other processes only ever add time.
        res["min_s"] = min(res["times_s"]) if res["times_s"] else None
    return out


# ----------------------------------------------------------------------------- trainers


class Bench:
    """Builds trainers for given class names (`trainers.build_trainer`, no data loaders); the
    frozen CLIP is loaded once and shared (a trainer that trains CLIP weights copies it)."""

    def __init__(self, args, device, clip_path):
        self.args = args
        self.device = device
        self.clip_path = clip_path
        self.frozen_clip = None

    def build(self, name, base, virtual, opts=()):
        cfg = make_cfg(name, self.args, self.clip_path, opts)
        if self.frozen_clip is None:
            dtype = torch.float16 if cfg.TRAINER.PREC == "fp16" else torch.float32
            self.frozen_clip = load_clip(self.clip_path, dtype=dtype).to(self.device)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = trainers.build_trainer(
                cfg, base, list(base) + list(virtual), clip_model=self.frozen_clip
            )
        trainer.batch_idx, trainer.num_batches = 0, 2  # never an epoch's last batch: no LR step
        return trainer


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
    base = classnames(args, args.classes + args.virtual)
    base, virtual = base[: args.classes], base[args.classes :]
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    label = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    eval_image = torch.randn(args.eval_batch, 3, args.image_size, args.image_size, generator=gen).to(device)
    batch = {"img": image, "label": label}

    built, rows = {}, {}
    for name in args.trainers:
        variants = {"default": []}
        if TRAINERS[name][2]:
            variants.update(REFERENCES)
        built[name] = {v: bench.build(name, base, virtual, opts) for v, opts in variants.items()}
        trainer = built[name]["default"]
        enc = trainer.cfg.TRAINER.TEXT_ENCODER
        rows[name] = {
            "trainer": trainer.cfg.TRAINER.NAME,
            "config": os.path.relpath(trainer_config_file(*TRAINERS[name][:2], args.dataset), REPO),
            "text_encoder": {k: enc[k] for k in ("TRUNCATE", "ATTENTION", "CHUNK_SIZE", "CHECKPOINT")},
            "tokens_per_step": {v: encoded_tokens(t, args.batch) for v, t in built[name].items()},
            "prompts_per_step": prompts_per_step(trainer, args.batch),
        }
        print(f"built {name} ({', '.join(built[name])})", flush=True)

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

    steps = {n: train_step(v["default"], batch) for n, v in built.items() if n != "ZeroshotCLIP"}
    for name in steps:
        built[name]["default"].set_model_mode("train")
    for name, res in round_robin(steps, args, device, peak).items():
        rows[name]["train_step"] = res
    print("training steps timed", flush=True)

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
    paired = {}
    if "ZeroshotCLIP" in built and "MoCoOp" in built:
        # Target (b) compares two nearly equal costs: a longer alternation of just these two.
        longer = argparse.Namespace(**{**vars(args), "repeats": 3 * args.repeats, "warmup": 0})
        paired = round_robin(
            {n: evals[(n, "eval")] for n in ("ZeroshotCLIP", "MoCoOp")}, longer, device, peak
        )
        print("ZeroshotCLIP / MoCoOp evaluation timed in alternation", flush=True)
    return rows, paired, {"base": base, "virtual": virtual, "names": name_stats(base + virtual)}


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


def _ms(res, best=False):
    if res and res.get("oom"):
        return "OOM"
    if not res or res["median_s"] is None:
        return "–"
    text = f"{1000 * res['median_s']:.0f}"
    return text + f" ({1000 * res['min_s']:.0f})" if best else text


def _img_s(res, batch):
    if res.get("oom"):
        return "OOM"
    if res["median_s"] is None:
        return "–"
    return f"{batch / res['median_s']:.2f} ({batch / res['min_s']:.2f})"


def _x(slow, fast):
    value = ratio(slow, fast)
    return "–" if value is None else f"{value:.2f}x"


def _mib(res):
    return "–" if not res or res.get("peak_bytes") is None else f"{res['peak_bytes'] / MIB:.0f}"


def print_trainer_tables(rows, goals, eval_batch):
    main = []
    for name, row in rows.items():
        enc = row["text_encoder"]
        main.append(
            [
                name,
                row["prompts_per_step"],
                row["tokens_per_step"]["default"],
                f"{'trunc' if enc['TRUNCATE'] else '77'}/{enc['ATTENTION']}/chunk {enc['CHUNK_SIZE']}"
                + ("/ckpt" if enc["CHECKPOINT"] else ""),
                _ms(row.get("train_step"), best=True),
                _mib(row.get("train_step")),
                _img_s(row["eval"], eval_batch),
                _mib(row["eval"]),
                _ms(row.get("cache_build")),
            ]
        )
    print("\n### Trainers (default speed options; times: median (fastest call))\n")
    print(
        tabulate(
            main,
            headers=[
                "trainer",
                "prompts/step",
                "tokens/step",
                "text encoder",
                "train step ms",
                "train peak MiB",
                "eval img/s",
                "eval peak MiB (with cache build)",
                "cache build ms",
            ],
            tablefmt="github",
        )
    )
    opts = []
    for name, row in rows.items():
        if "text_fwd_bwd" not in row:
            continue
        for ref in REFERENCES:
            if ref not in row["text_fwd_bwd"]:
                continue
            fast_label = "truncated" if ref == "77-token" else "fused"
            for kind, label in (("text_fwd_bwd", "fwd+bwd"), ("text_fwd", "fwd")):
                if kind not in row:
                    continue
                fast, slow = row[kind]["default"], row[kind][ref]
                opts.append(
                    [
                        name,
                        f"{fast_label} vs {ref} ({label})",
                        _ms(fast),
                        _ms(slow),
                        _x(slow["median_s"], fast["median_s"]),
                        _x(slow["min_s"], fast["min_s"]),
                        _mib(fast),
                        _mib(slow),
                    ]
                )
        if "per_batch" in row:
            fast, slow = row["eval"], row["per_batch"]
            opts.append(
                [
                    name,
                    "cached vs per-batch eval (ms per batch)",
                    _ms(fast),
                    _ms(slow),
                    _x(slow["median_s"], fast["median_s"]),
                    _x(slow["min_s"], fast["min_s"]),
                    _mib(fast),
                    _mib(slow),
                ]
            )
    print(
        "\n### Speed options against their reference paths (text encoding of one training step, "
        "and evaluation)\n"
    )
    print(
        tabulate(
            opts,
            headers=[
                "trainer",
                "option vs reference",
                "option ms",
                "reference ms",
                "speed-up",
                "speed-up (fastest calls)",
                "option peak MiB",
                "reference peak MiB",
            ],
            tablefmt="github",
        )
    )
    print_targets(goals)


def print_targets(goals):
    if not goals:
        return
    print("\n### Targets\n")
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    table = [
        [
            k,
            g["target"],
            g["value"],
            verdict[g["met"]],
            ", ".join(
                f"{x}: {g[x]}"
                for x in ("forward_only", "token_ratio", "step_ratio", "text_only", "calls", "best_calls")
                if x in g
            ),
        ]
        for k, g in goals.items()
    ]
    print(tabulate(table, headers=["", "target", "measured", "", "details"], tablefmt="github"))


# ----------------------------------------------------------------------------- ImageNet scale


def saved_bytes_per_token(tower, dtype, device):
    """Bytes autograd keeps per token in one residual block (distinct storages of the saved
    tensors, frozen weights excluded), measured on a 1-layer CLIP of ViT-B/16's widths.

    text: `TextEncoder._block` (frozen weights, as in every trainer); image: the image tower's
    block with trainable LayerNorms (MoCoOp release preset), input [tokens, batch, 768].
    """
    clip_model = build_tiny_clip(
        **{**VIT_B16, "image_resolution": 32, "vision_layers": 1, "transformer_layers": 1}
    )
    if dtype == torch.float16:
        convert_weights(clip_model)
    clip_model = clip_model.to(device).requires_grad_(False)
    encoder = TextEncoder(clip_model)
    if tower == "text":
        n, length, width = 4, 16, VIT_B16["transformer_width"]
        x = torch.randn(n, length, width, device=device, dtype=encoder.dtype, requires_grad=True)
        block = lambda: encoder._block(encoder.blocks[0], x)
    else:
        block_module = clip_model.visual.transformer.resblocks[0]
        for m in block_module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.requires_grad_(True)
        n, length, width = 2, 197, VIT_B16["vision_width"]
        x = torch.randn(length, n, width, device=device, dtype=encoder.dtype, requires_grad=True)
        block = lambda: block_module(x)
    weights = {p.untyped_storage().data_ptr() for p in clip_model.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block()
    del out
    return sum(storages.values()) / (n * length)


def analytic_block_bytes(width=512, heads=8, elem=2):
    """Per token and residual block of the text transformer with frozen weights: what
    autograd keeps for the backward pass of `TextEncoder._block`.

    The frozen linear layers keep no input (the gradient of their input needs only their
    weight). CLIP's LayerNorm runs in fp32: the fp32 copy of its input and two statistics are
    kept. Fused attention keeps q, k, v (one storage), its output and a log-sum-exp per head;
    QuickGELU `x * sigmoid(1.702 x)` keeps x and the sigmoid.
    """
    parts = {
        "ln_1 input (fp32), mean, rstd": width * 4 + 8,
        "q, k, v": 3 * width * elem,
        "attention output": width * elem,
        "attention log-sum-exp (fp32)": heads * 4,
        "ln_2 input (fp32), mean, rstd": width * 4 + 8,
        "c_fc output and its sigmoid": 2 * 4 * width * elem,
    }
    return sum(parts.values()), parts


def mocoop_prompts(names, experts):
    """(EOT positions, padded length, template count) of MoCoOp's prompts on ImageNet's first
    `experts` experts, from the real prompt assembler."""
    sizes, templates = expert_groups("imagenet", experts)
    forms = [PromptForm.from_template(templates[sum(sizes[:g])]) for g in range(len(sizes))]
    # Only the token ids are read: a 1 x 1 embedding stands in for CLIP's table.
    assembler = PromptAssembler(forms, names, torch.nn.Embedding(1, 1))
    return assembler.eot, assembler.token_ids.shape[1], len(templates)


def mocoop_tokens(prompts, chunk):
    """Rows and sequence positions of one MoCoOp training step over `mocoop_prompts`:
    `positions` as TextEncoder runs them (padded to the longest EOT of the call or of each
    chunk), `to_eot` without any padding."""
    eot, length, templates = prompts
    calls = call_positions(eot, length, chunk)
    return {
        "rows": len(eot),
        "longest": length,
        "positions": sum(calls),
        "to_eot": int((eot + 1).sum()),
        "largest_call": max(calls),
        "templates": templates,
    }


def memory_estimate(tokens, text_classes, per_token, elem, checkpointing, layers=12, width=512):
    """Bytes a MoCoOp (paper) training step adds to the resident model, by component.

    Without checkpointing every block keeps its activations until backward; with it, a block
    keeps only its input and backward recomputes one block of one encoder call (chunk) at a
    time. The assembled prompt embeddings (fp32 token embeddings, looked up then written into)
    live through the forward pass; the paper's text loss keeps [C, C] fp32 logits and their
    softmax per template.
    """
    if checkpointing:
        text = tokens["positions"] * layers * width * elem + tokens["largest_call"] * per_token
    else:
        text = tokens["positions"] * layers * per_token
    parts = {
        "text activations": text,
        "prompt embeddings": 2 * tokens["rows"] * tokens["longest"] * width * 4,
        "text loss": 2 * tokens["templates"] * text_classes**2 * 4,
    }
    return sum(parts.values()), parts


def imagenet_scale(args, device, bench, peak, weight_bytes):
    per_token = {}
    for dtype in (torch.float16, torch.float32):
        label = "fp16" if dtype == torch.float16 else "fp32"
        per_token[label] = {
            "text_analytic": analytic_block_bytes(elem=dtype.itemsize)[0],
            "text_autograd": saved_bytes_per_token("text", dtype, device),
            "image_autograd": saved_bytes_per_token("image", dtype, device),
        }
    full = IMAGENET
    full_classes = full["classes"] + full["virtual"]
    full_names = classnames(args, full_classes)
    image_tokens = full["batch"] * ((VIT_B16["image_resolution"] // VIT_B16["vision_patch_size"]) ** 2 + 1)
    release_image = image_tokens * VIT_B16["vision_layers"] * per_token["fp16"]["image_autograd"]
    full_rows = []
    full_prompts = mocoop_prompts(full_names, full["experts"])
    for chunk, ckpt in ((0, False), (full_classes, False), (0, True), (full_classes, True)):
        tokens = mocoop_tokens(full_prompts, chunk)
        total, parts = memory_estimate(tokens, full_classes, per_token["fp16"]["text_autograd"], 2, ckpt)
        total += weight_bytes["fp16"]
        full_rows.append(
            {
                "CHUNK_SIZE": chunk,
                "CHECKPOINT": ckpt,
                **tokens,
                "estimate_bytes": total,
                "parts": parts,
                "release_extra_bytes": release_image,
                "fits_80GB": total + release_image <= GPU_BUDGET * GPU_MEMORY,
            }
        )

    # Measured: full scale on a GPU; on a CPU a reduced one (20,000 prompts take minutes there).
    text_classes = args.classes + args.virtual
    chunk = args.chunk_size or text_classes
    names = classnames(args, text_classes)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device),
        "label": torch.randint(0, args.classes, (args.batch,), generator=gen).to(device),
    }
    elem = 2 if args.prec == "fp16" else 4
    measured = []
    prompts = mocoop_prompts(names, args.experts)
    for c, ckpt in ((0, False), (chunk, False), (0, True), (chunk, True)):
        opts = ["TRAINER.TEXT_ENCODER.CHUNK_SIZE", str(c), "TRAINER.TEXT_ENCODER.CHECKPOINT", str(ckpt)]
        row = {"CHUNK_SIZE": c, "CHECKPOINT": ckpt, "oom": False}
        trainer = None
        try:
            trainer = bench.build("MoCoOp", names[: args.classes], names[args.classes :], opts)
            trainer.set_model_mode("train")
            res = round_robin({"step": train_step(trainer, batch)}, args, device, peak)["step"]
            row.update(
                peak_bytes=res["peak_bytes"], median_s=res["median_s"], times_s=res["times_s"], oom=res["oom"]
            )
        except torch.OutOfMemoryError:
            row.update(peak_bytes=None, median_s=None, oom=True)
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        tokens = mocoop_tokens(prompts, c)
        label = "fp16" if args.prec == "fp16" else "fp32"
        row.update(tokens)
        row["estimate_bytes"], row["parts"] = memory_estimate(
            tokens, text_classes, per_token[label]["text_autograd"], elem, ckpt
        )
        measured.append(row)
        print(f"measured CHUNK_SIZE {c} CHECKPOINT {ckpt}", flush=True)
    return {
        "per_token_per_layer_bytes": per_token,
        "names": name_stats(full_names),
        "full_scale": {**full, "prec": "fp16", "weights_bytes": weight_bytes["fp16"], "rows": full_rows},
        "measured_scale": {
            "experts": args.experts,
            "classes": args.classes,
            "virtual": args.virtual,
            "batch": args.batch,
            "prec": args.prec,
            "rows": measured,
        },
    }


def print_imagenet(res):
    pt = res["per_token_per_layer_bytes"]
    print("\n### Activations kept for backward, bytes per token and residual block\n")
    print(
        tabulate(
            [
                [k, v["text_analytic"], f"{v['text_autograd']:.0f}", f"{v['image_autograd']:.0f}"]
                for k, v in pt.items()
            ],
            headers=["weights", "text (analytic)", "text (autograd)", "image, LN trained (autograd)"],
            tablefmt="github",
        )
    )
    full = res["full_scale"]
    print(
        f"\n### MoCoOp at ImageNet scale: {full['experts']} experts x ({full['classes']} + {full['virtual']}) "
        f"text classes, batch {full['batch']}, fp16 (estimate; class names {res['names']['mean_bpe_tokens']} "
        f"BPE tokens on average, at most {res['names']['max_bpe_tokens']})\n"
    )
    table = []
    for r in full["rows"]:
        table.append(
            [
                r["CHUNK_SIZE"],
                r["CHECKPOINT"],
                r["rows"],
                r["positions"],
                r["to_eot"],
                f"{r['parts']['text activations'] / GIB:.1f}",
                f"{r['estimate_bytes'] / GIB:.1f}",
                f"{r['release_extra_bytes'] / GIB:.1f}",
                "yes" if r["fits_80GB"] else "no",
            ]
        )
    print(
        tabulate(
            table,
            headers=[
                "CHUNK_SIZE",
                "CHECKPOINT",
                "prompts",
                "positions run",
                "positions to EOT",
                "text activations GiB",
                "step total GiB",
                "+ release image GiB",
                f"fits {GPU_BUDGET:.0%} of 80 GB",
            ],
            tablefmt="github",
        )
    )
    m = res["measured_scale"]
    print(
        f"\n### Measured: {m['experts']} experts x ({m['classes']} + {m['virtual']}) text classes, batch "
        f"{m['batch']}, {m['prec']}\n"
    )
    ref = m["rows"][0]["peak_bytes"]
    table = []
    for r in m["rows"]:
        peak_b = r["peak_bytes"]
        table.append(
            [
                r["CHUNK_SIZE"],
                r["CHECKPOINT"],
                r["positions"],
                "OOM" if r["oom"] else ("–" if peak_b is None else f"{peak_b / MIB:.0f}"),
                f"{r['estimate_bytes'] / MIB:.0f}",
                "–" if not (peak_b and ref) else f"{ref / peak_b:.2f}x",
                "–" if r["median_s"] is None else f"{r['median_s']:.2f}",
            ]
        )
    print(
        tabulate(
            table,
            headers=[
                "CHUNK_SIZE",
                "CHECKPOINT",
                "positions run",
                "peak MiB",
                "estimate MiB",
                "reduction",
                "step s",
            ],
            tablefmt="github",
        )
    )


# ----------------------------------------------------------------------------- main


def machine(device):
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
    return info


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = machine(device)
    load_before = os.getloadavg()
    started = time.time()
    peak = PeakMemory(device)
    print(
        f"# Benchmark ({args.scale} scale) on {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
        f"{info['threads']} threads, load average {load_before[0]:.2f}",
        flush=True,
    )

    clip_model = build_tiny_clip(**{**VIT_B16, "image_resolution": args.image_size})
    weight_bytes = {"fp32": sum(t.numel() * t.element_size() for t in clip_model.state_dict().values())}
    with tempfile.TemporaryDirectory() as tmp:
        clip_path = save_clip_state_dict(clip_model, os.path.join(tmp, "vit_b16_random.pt"))
        half = copy.deepcopy(clip_model)
        convert_weights(half)
        weight_bytes["fp16"] = sum(t.numel() * t.element_size() for t in half.state_dict().values())
        del clip_model, half
        bench = Bench(args, device, clip_path)
        result = {"args": vars(args), "machine": info, "memory_method": peak.method}
        if args.scale == "imagenet":
            result["imagenet"] = imagenet_scale(args, device, bench, peak, weight_bytes)
        else:
            rows, paired, inputs = trainer_table(args, device, bench, peak)
            result.update(trainers=rows, target_b_eval=paired, inputs=inputs, targets=targets(rows, paired))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["wall_s"] = round(time.time() - started, 1)

    print(
        f"\nMachine: {info}\nLoad average before/after: {load_before} / {result['load_average']['after']}; "
        f"peak memory: {peak.method}"
    )
    if args.scale == "imagenet":
        print_imagenet(result["imagenet"])
    else:
        print(
            f"Classes: {args.classes} (+{args.virtual} virtual for MoCoOp), names {result['inputs']['names']}"
        )
        print_trainer_tables(result["trainers"], result["targets"], args.eval_batch)
    path = args.json or os.path.join(REPO, "output", "benchmark", f"{args.scale}_{args.device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nWrote {path} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
