"""The text-encoder paths the benchmark compares, the token positions each runs, and the timed
calls (a training step, its text encoding, an evaluation batch, a cache build) of a trainer."""

import time

import torch

from clipprompt.caching import CachedTextFeatures
from clipprompt.prefix_sharing import SharedPrefix, pack, prefix_calls
from clipprompt.text_encoder import transformer_calls
from tools.benchmark.measure import sync

# Text-encoder paths: the config overrides that select each. "shared" is the default
# (truncated prompts, shared prefixes); "truncated" was the default before
# TEXT_ENCODER.SHARE_PREFIX; "77-token" is the full reference (CLIP's 77 positions, every row in
# full); "math" is "truncated" with the explicit attention kernel, the reference of ATTENTION
# fused (with a shared prefix, ATTENTION applies to the prefix positions only).
PATHS = {
    "shared": [],
    "truncated": ["TRAINER.TEXT_ENCODER.SHARE_PREFIX", "False"],
    "77-token": ["TRAINER.TEXT_ENCODER.TRUNCATE", "False", "TRAINER.TEXT_ENCODER.SHARE_PREFIX", "False"],
    "math": ["TRAINER.TEXT_ENCODER.ATTENTION", "math", "TRAINER.TEXT_ENCODER.SHARE_PREFIX", "False"],
}
# (option, reference, what the option is) of each comparison the tables print.
COMPARISONS = (
    ("shared", "truncated", "shared prefix vs truncated only"),
    ("shared", "77-token", "shared prefix vs 77 tokens"),
    ("truncated", "77-token", "truncated vs 77 tokens"),
    ("truncated", "math", "fused vs math attention (unshared)"),
)


def call_positions(encoder, eot, width, prefix=None):
    """Sequence positions of each transformer call `encoder` (a `TextEncoder`) makes for prompts
    `[N, width]` with these EOT positions and `SharedPrefix`, decided as the encoder decides."""
    if encoder.share_prefix and prefix is not None:
        full = None if encoder.truncate else width
        return [
            sum(pack(rows, eot, prefix, full).sizes) for rows in prefix_calls(eot, prefix, encoder.chunk_size)
        ]
    calls = transformer_calls(eot, width, encoder.chunk_size, encoder.truncate)
    return [len(rows) * length for rows, length in calls]


def work_positions(work):
    """Positions of each transformer call of one encoding of a `PromptWork`: its rows (default
    all), once per prompt set."""
    assembler, rows, sets = work.assembler, work.rows, work.sets
    eot, group, length = assembler.eot, assembler.prefix_group, assembler.prefix_length
    width = assembler.token_ids.shape[1]
    if rows is not None:
        eot, group, length = eot[rows], group[rows], length[rows]
        if assembler.truncate:
            width = int(eot.max()) + 1
    if sets > 1:
        offset = torch.arange(sets, device=group.device)[:, None] * (int(group.max()) + 1)
        group, length, eot = (group + offset).flatten(), length.repeat(sets), eot.repeat(sets)
    return call_positions(work.encoder, eot, width, SharedPrefix(group, length))


def step_positions(trainer, batch):
    """Positions of each text-transformer call of one training step (none for a model that
    encodes no prompt)."""
    work = trainer.model.prompt_work(batch, training=True)
    return [] if work is None else work_positions(work)


def eval_positions(trainer, batch):
    """Positions of each text-transformer call of one evaluation of a batch without the cache
    (with it, of the cache build)."""
    work = trainer.model.prompt_work(batch, training=False)
    return [] if work is None else work_positions(work)


def prompts_per_step(trainer, batch):
    work = trainer.model.prompt_work(batch, training=True)
    if work is None:
        return 0
    rows = work.assembler.num_rows if work.rows is None else len(work.rows)
    return rows * work.sets


def prompt_encoder(trainer, image_features=None):
    """The text encoding of one training step for these image features (None: a model whose
    prompts do not depend on the image), as a function of nothing; None for a model that
    encodes no prompt."""
    work = trainer.model.prompt_work(1 if image_features is None else image_features.shape[0], training=True)
    if work is None:
        return None
    return lambda: work.encode(image_features)


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
    """The cache `PromptTrainer.test` opens, built and dropped."""

    def run():
        with trainer.model.cached_text_features():
            pass

    return run
