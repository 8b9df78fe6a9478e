"""The benchmark's inputs and trainers: generated class names, the configs the protocol
scripts use, and trainers built for given class names (no data loaders)."""

import contextlib
import io
import os
import random
import statistics
from pathlib import Path

import torch

import trainers
from clipprompt.clip_loading import load_clip
from clipprompt.templates import _TOKENIZER, bpe, clean_classname
from tools.protocols import trainer_config

REPO = str(Path(__file__).resolve().parents[2])

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


def benchmark_rows():
    """Benchmark row -> (trainer, trainer config as the protocol scripts name it, whether to
    compare every text-encoder path): the rows every trainer declares (`benchmark_rows`)."""
    return {
        row: (name, config, compare)
        for name in trainers.repository_trainers()
        for row, config, compare in trainers.get_trainer_class(name).benchmark_rows
    }


TRAINERS = benchmark_rows()


def learns(trainer):
    """Whether the trainer has tensors to train (a training step to time)."""
    return trainer.optim is not None


def encodes_prompts(trainer):
    """Whether the trainer's model encodes soft prompts (text-encoder paths to compare)."""
    return trainer.model.prompt_work(1) is not None


# Dataset sizes of the protocols' datasets (CoOp's split files): classes and
# test images (ImageNet: its 50,000 validation images, used as the test set). Experts and
# templates come from configs/datasets/<dataset>.yaml, batches from the trainer configs.
SIZES = {
    "eurosat": {"classes": 10, "test_images": 8100},
    "sun397": {"classes": 397, "test_images": 19850},
    "imagenet": {"classes": 1000, "test_images": 50000},
}


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
    with open(path, encoding="utf-8-sig") as f:  # with or without a byte-order mark
        lines = [line.strip() for line in f if line.strip()]
    first = [line.split(" ", 1)[0] for line in lines]
    if all(w[:1] == "n" and w[1:].isdigit() and " " in line for w, line in zip(first, lines)):
        lines = [line.split(" ", 1)[1] for line in lines]  # ImageNet's "<wnid> <name>"
    return lines


def dataset_classnames(dataset):
    """The real class names of a dataset whose names the repository knows (EuroSAT's readable
    names), else None."""
    if dataset == "eurosat":
        from datasets.eurosat import READABLE_NAMES

        return list(READABLE_NAMES.values())
    return None


def classnames(args, total):
    """(`total` distinct class names, where they come from): --classnames-file's, else the
    dataset's real names where the repository knows enough of them, else generated ones."""
    if args.classnames_file:
        names, source = list(dict.fromkeys(read_classnames(args.classnames_file))), args.classnames_file
    else:
        known = dataset_classnames(args.dataset)
        if known and len(known) >= total:
            names, source = known, f"{args.dataset}'s class names"
        else:
            names, source = generated_classnames(total), "generated"
    if len(names) < total:
        raise ValueError(
            f"--classnames-file {args.classnames_file} has {len(names)} distinct names; "
            f"{total} are needed (--classes + --virtual)"
        )
    return names[:total], source


def name_stats(names):
    counts = [len(bpe(clean_classname(n))) for n in names]
    return {
        "mean_bpe_tokens": round(statistics.mean(counts), 2),
        "max_bpe_tokens": max(counts),
        "examples": names[:5],
    }


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


def make_cfg(name, args, backbone, opts=()):
    """The config of benchmark row `name` for `args.dataset` (with `args.experts`: the first
    that many expert groups of the dataset's prompts), at `args.prec`, plus `opts`; `backbone`
    is {name, weights, model_config} (MODEL.BACKBONE's keys)."""
    trainer, config, _ = TRAINERS[name]
    extra = expert_subset(args.dataset, args.experts) if args.experts else []
    options = [
        "MODEL.BACKBONE.NAME", backbone["name"], "MODEL.BACKBONE.WEIGHTS", backbone["weights"],
        "MODEL.BACKBONE.MODEL_CONFIG", backbone["model_config"], "TRAINER.PREC", args.prec, "INPUT.SIZE",
        f"({args.image_size}, {args.image_size})", "USE_CUDA", str(args.device == "cuda"), *extra, *opts,
    ]  # fmt: skip
    config_file = os.path.join(REPO, trainer_config(trainer, config, args.dataset, REPO))
    return trainers.make_cfg(trainer, dataset_file(args.dataset), config_file, options)


class Bench:
    """Builds trainers for given class names (`trainers.build_trainer`, no data loaders); the
    frozen CLIP is loaded once per weight dtype and shared (a trainer that trains CLIP weights
    copies it)."""

    def __init__(self, args, device, backbone):
        self.args = args
        self.device = device
        self.backbone = backbone  # {name, weights, model_config}: MODEL.BACKBONE's keys
        self.frozen_clips = {}  # by weight dtype

    def build(self, name, base, virtual, opts=(), args=None):
        """Benchmark row `name` for `base` classes (+ `virtual` text classes) with the
        config overrides `opts`; `args` replaces the command line's dataset, experts, precision."""
        cfg = make_cfg(name, args or self.args, self.backbone, opts)
        dtype = torch.float16 if cfg.TRAINER.PREC == "fp16" else torch.float32
        if dtype not in self.frozen_clips:
            b = self.backbone
            clip_model = load_clip(
                b["name"], dtype=dtype, weights=b["weights"], model_config=b["model_config"]
            )
            self.frozen_clips[dtype] = clip_model.to(self.device)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = trainers.build_trainer(
                cfg, base, list(base) + list(virtual), clip_model=self.frozen_clips[dtype]
            )
        trainer.batch_idx, trainer.num_batches = 0, 2  # never an epoch's last batch: no LR step
        return trainer
