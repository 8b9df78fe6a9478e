"""Pretrain a tiny CLIP on the demo world (tools/demo/) and save it compressed.

The model is `clip.model.CLIP` with a ModifiedResNet image tower (`--arch rn`, the demo's CLIP)
or a ViT image tower (`--arch vit`, for the methods that prompt the image tower's layers), and
the same text tower, so that `clip.model.build_model` (and the repository's CLIP loader) rebuild
it from the state dict.
The checkpoint is the fp16 state dict, with the token-embedding rows that no pretraining
caption used set to zero (they would be untrained noise), gzip-compressed.

After training the script prints zero-shot accuracies on the demo world's test split.

Usage: python -m tools.pretrain_tiny_clip --out assets/demo_clip_rn_tiny.pt.gz [--arch rn|vit --steps N --seed N]
"""

import argparse
import functools
import gzip
import io
import math
import os
import sys
import time
import warnings

# Idle OpenMP threads otherwise spin: on a CPU shared with other jobs, two spinning threads
# made a step ten times slower (same results either way). Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

from clipprompt.clip_loading import build_tiny_clip, load_clip
from tools.demo import world
from tools.demo.captions import pretraining_batch
from tools.demo.dataset import render_split
from tools.demo.render import to_tensor
from tools.results.stats import harmonic

with warnings.catch_warnings():
    # openai-clip imports pkg_resources, which warns on every setuptools < 81.
    warnings.simplefilter("ignore")
    import clip

# Arguments of clipprompt.clip_loading.build_tiny_clip, which sets CLIP's vocabulary (49408)
# and one attention head per 64 dims (2 here), as build_model infers them from a state dict. The
# two image towers share everything else. The ViT's 16 px patches cut a 64 px image into a 4x4
# grid (ViT-B/16's patch size; 17 tokens, so a step costs about what the ResNet's does).
_TEXT = {"embed_dim": 128, "image_resolution": world.IMAGE_SIZE, "context_length": 77}
_TEXT |= {"transformer_width": 128, "transformer_layers": 3}
ARCHS = {
    "rn": {**_TEXT, "vision_layers": (1, 1, 1, 1), "vision_width": 16},
    "vit": {**_TEXT, "vision_layers": 4, "vision_width": 128, "vision_patch_size": 16},
}
DEFAULTS = {"steps": 2000, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.1, "warmup": 75}
SOT_ID = clip.clip._tokenizer.encoder["<|startoftext|>"]
EOT_ID = clip.clip._tokenizer.encoder["<|endoftext|>"]


def build_demo_clip(seed, arch="rn", **overrides):
    """The randomly initialised tiny CLIP of ARCHS[arch] (with `overrides`) that pretraining
    starts from."""
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny-CLIP architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    return build_tiny_clip(**{**ARCHS[arch], **overrides}, seed=seed)


def encode_text(model, tokens):
    """`model.encode_text` computed on the first L positions only (L: the longest prompt).

    The text transformer is causal, so the features at the EOT token do not depend on later
    positions: truncating the padding gives the same result (to float rounding) at a fraction
    of the cost of the 77-token context.
    """
    length = int((tokens == EOT_ID).int().argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens).type(model.dtype)
    x = x + model.positional_embedding[:length].type(model.dtype)
    x = x.permute(1, 0, 2)
    mask = model.transformer.resblocks[0].attn_mask[:length, :length].to(x.dtype)
    for block in model.transformer.resblocks:
        y = block.ln_1(x)
        x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2)).type(model.dtype)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def clip_loss(model, images, tokens):
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(encode_text(model, tokens), dim=-1)
    logits = model.logit_scale.exp() * image_features @ text_features.t()
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _optimizers(model, lr, weight_decay):
    """AdamW for the network, SparseAdam for the token embedding.

    The world's captions use about a hundred of the 49408 vocabulary rows: a dense Adam update of
    the 6.3M-row embedding would cost more than the forward and backward passes together.
    Weight matrices are decayed; biases, norms, embeddings and the temperature are not.
    """
    model.token_embedding.sparse = True
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name == "token_embedding.weight":
            continue
        skip = param.ndim < 2 or "embedding" in name or name == "logit_scale"
        (no_decay if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [
        torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6),
        torch.optim.SparseAdam([model.token_embedding.weight], lr=lr, betas=(0.9, 0.98), eps=1e-6),
    ]


def pretrain(
    steps=DEFAULTS["steps"],
    seed=0,
    batch_size=DEFAULTS["batch_size"],
    lr=DEFAULTS["lr"],
    weight_decay=DEFAULTS["weight_decay"],
    warmup=DEFAULTS["warmup"],
    log_every=50,
    log=print,
    arch="rn",
    **overrides,
):
    """Train a tiny CLIP on demo-world (image, caption) pairs.

    Returns (model in eval mode, bool mask over the vocabulary of the token ids that occurred
    in a caption).
    """
    model = build_demo_clip(seed, arch, **overrides)
    model.train()
    rng = np.random.default_rng([seed, 1000])  # a stream of its own: never the dataset's images
    optimizers = _optimizers(model, lr, weight_decay)
    warmup = min(warmup, max(steps // 10, 1))

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))

    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lr_factor) for opt in optimizers]
    used = torch.zeros(model.vocab_size, dtype=torch.bool)
    start = time.time()
    for step in range(steps):
        images, captions = pretraining_batch(rng, batch_size)
        tokens = clip.tokenize(captions, context_length=model.context_length)
        # The padding after EOT (id 0, the token "!") is not a use of a token.
        is_eot = (tokens == EOT_ID).int()
        after_eot = is_eot.cumsum(dim=-1) - is_eot > 0
        used[tokens[~after_eot].long()] = True
        loss = clip_loss(model, to_tensor(images), tokens)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt, scheduler in zip(optimizers, schedulers):
            opt.step()
            scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(
                f"step {step + 1}/{steps}  loss {loss.item():.4f}  "
                f"logit_scale {model.logit_scale.exp().item():.1f}  elapsed {time.time() - start:.0f}s"
            )
    used[[SOT_ID, EOT_ID]] = True
    model.token_embedding.sparse = False
    return model.eval(), used


def compressed_state_dict(model, used_tokens):
    """fp16 state dict with the unused token-embedding rows zeroed, torch.save'd and gzipped."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if value.is_floating_point():
            value = value.half()
        state[key] = value
    state["token_embedding.weight"][~used_tokens] = 0
    buffer = io.BytesIO()
    torch.save(state, buffer)
    # mtime=0: the same weights give the same bytes.
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def save_checkpoint(model, used_tokens, path):
    data = compressed_state_dict(model, used_tokens)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


# ---------------------------------------------------------------------------------------------
# Zero-shot evaluation on the demo world
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def text_features(model, template, classnames):
    tokens = clip.tokenize([template.format(name) for name in classnames])
    return F.normalize(encode_text(model, tokens).float(), dim=-1)


@torch.no_grad()
def image_features(model, images, chunk=500):
    feats = [model.encode_image(to_tensor(images[i : i + chunk])) for i in range(0, len(images), chunk)]
    return F.normalize(torch.cat(feats).float(), dim=-1)


@torch.no_grad()
def zero_shot_accuracies(model, feats, labels, styles, classnames):
    """Accuracy (%) with the generic template, the style-matched template, and the ensemble."""
    labels, styles = torch.as_tensor(labels), torch.as_tensor(styles)
    per_style = torch.stack(
        [text_features(model, world.STYLE_TEMPLATES[s], classnames) for s in world.STYLES]
    )
    generic = feats @ text_features(model, world.GENERIC_TEMPLATE, classnames).t()
    matched = torch.einsum("nd,ncd->nc", feats, per_style[styles])
    ensemble = feats @ F.normalize(per_style.mean(0), dim=-1).t()
    acc = lambda logits: 100.0 * (logits.argmax(-1) == labels).float().mean().item()
    return {"generic": acc(generic), "matched": acc(matched), "ensemble": acc(ensemble)}


PROMPT_KINDS = (
    ("generic", world.GENERIC_TEMPLATE),
    ("matched", "style-matched"),
    ("ensemble", "11-style ensemble"),
)


def evaluate(model, seed=world.DEFAULT_SEED, log=print):
    """Zero-shot numbers on the test split that `tools.demo_world --seed seed` writes."""
    results = {}
    n_base = len(world.BASE_CLASSNAMES)
    for shifted, tag in ((True, "test split"), (False, "test split's scenes without the shift")):
        images, labels, styles = render_split(seed, "test", shifted=shifted)
        feats = image_features(model, images)
        base, new = labels < n_base, labels >= n_base
        res = {
            "base": zero_shot_accuracies(
                model, feats[base], labels[base], styles[base], world.BASE_CLASSNAMES
            ),
            "new": zero_shot_accuracies(
                model, feats[new], labels[new] - n_base, styles[new], world.NEW_CLASSNAMES
            ),
            "all40": zero_shot_accuracies(model, feats, labels, styles, world.CLASSNAMES),
        }
        results[tag] = res
        log(f"zero-shot on the {tag} ({len(labels)} images), accuracy %:")
        log(f"  {'prompt':<20}{'base (20-way)':>15}{'new (20-way)':>14}{'H':>7}{'all (40-way)':>14}")
        for kind, name in PROMPT_KINDS:
            b, n = res["base"][kind], res["new"][kind]
            log(f"  {name:<20}{b:>15.1f}{n:>14.1f}{harmonic(b, n):>7.1f}{res['all40'][kind]:>14.1f}")
    images, labels, styles = render_split(seed, "unseen", classnames=world.UNSEEN_CLASSNAMES)
    res = zero_shot_accuracies(model, image_features(model, images), labels, styles, world.UNSEEN_CLASSNAMES)
    results["unseen"] = res
    log(
        f"never-rendered compositions (10-way, {len(labels)} downstream images): "
        f"generic {res['generic']:.1f}, style-matched {res['matched']:.1f}, "
        f"ensemble {res['ensemble']:.1f}"
    )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tools.pretrain_tiny_clip", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="checkpoint path (.pt.gz)")
    parser.add_argument(
        "--steps", type=int, default=DEFAULTS["steps"], help=f"optimiser steps (default {DEFAULTS['steps']})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches (default 0)")
    parser.add_argument(
        "--arch", choices=list(ARCHS), default="rn", help="image tower: rn (ModifiedResNet) or vit"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS["batch_size"],
        help=f"(image, caption) pairs per step (default {DEFAULTS['batch_size']})",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (results depend on it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-eval", action="store_true", help="skip the zero-shot evaluation")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the checkpoint at --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = functools.partial(print, flush=True)  # progress shows up in redirected logs too
    if args.eval_only:
        if not os.path.isfile(args.out):
            print(f"error: --eval-only: no checkpoint at {args.out}", file=sys.stderr)
            return 1
    else:
        if os.path.exists(args.out) and not args.overwrite:
            print(
                f"error: {args.out} exists: pass --overwrite to replace it, or another --out", file=sys.stderr
            )
            return 1
        start = time.time()
        model, used = pretrain(
            steps=args.steps, seed=args.seed, batch_size=args.batch_size, log=log, arch=args.arch
        )
        size = save_checkpoint(model, used, args.out)
        log(
            f"saved {args.out} ({size / 2**20:.2f} MiB, {int(used.sum())} token rows kept) "
            f"after {time.time() - start:.0f}s"
        )
    if args.eval_only or not args.no_eval:
        eval_start = time.time()
        evaluate(load_clip(args.out), log=log)
        log(f"evaluation took {time.time() - eval_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
