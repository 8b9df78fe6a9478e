"""Speed and memory of the trainers' real training and evaluation paths, on each text-encoder path.

    python -m tools.benchmark [--size default|eurosat|sun397|imagenet] [--device cpu|cuda]
        [--classes C] [--virtual V] [--experts G] [--batch B] [--eval-batch E]
        [--prec fp32|fp16|amp] [--repeats N] [--threads T] [--trainers CoOp MoCoOp ...]
        [--dataset oxford_pets] [--forward] [--backbone open_clip:<model> [--backbone-config JSON]]
        [--json out.json]
    python -m tools.benchmark --suite targets --threads 1    # the shared prefix's targets
    python -m tools.benchmark --suite precision --threads 1  # PREC amp against fp32
    python -m tools.benchmark --suite gpu                    # the CUDA measurements

Every model is a real trainer: the config comes from `trainers.make_cfg` (the dataset config and
the trainer config the protocol scripts use, per-dataset files included) and the model from
the trainer's own `build_model`, with CLIP ViT-B/16's architecture and random weights loaded
through `MODEL.BACKBONE.NAME` (`--backbone open_clip:<model>`, for the trainer tables: that
open_clip model's architecture, with random weights, at its image size; a model whose text tower
has only its reference path is refused, docs/BACKBONES.md). Only Dassl's data loaders are left out: the trainer is given
the class names directly and fed random images. Class names are the dataset's where the
repository knows them (EuroSAT), else generated (1-3 words, rare words split into several BPE
tokens; `--classnames-file` takes a real list); the templates are the dataset config's.

Text-encoder paths (`paths.PATHS`): "shared" (the defaults: truncated prompts, shared
prefixes), "truncated" (`SHARE_PREFIX False`, the default before the shared prefix), "77-token"
(`TRUNCATE False`, `SHARE_PREFIX False`: CLIP's full reference) and "math" ("truncated" with
`ATTENTION math`). Each result gives the token positions the text transformer runs on each
path (counted as `TextEncoder` decides its calls): their ratio is the bound of a speed-up.

`--size default` (the trainer table): per trainer, one training step's text encoding on every
path (forward and backward; forward only too for CoOp, or every trainer with --forward), the
training step (`forward_backward`) on "shared" and "truncated", evaluation through
`model_inference` with the text features cached as `PromptTrainer.test` caches them and
without (recomputed for every test batch, as CoOp-family code does), and the cache build.
`--size eurosat|sun397`: the training step on "shared", "truncated" and "77-token", and the
full test-set evaluation, cached and per batch on each path, at the dataset's size (its
classes, all trained and tested; its templates and experts; the configs' batches, training
batches at most 8 on a CPU) and extrapolated from `--eval-repeats` timed test batches per path.
`--size imagenet`: MoCoOp at ImageNet scale (20 experts, 500 base + 500 virtual text
classes, batch 32): token counts from the real prompt assembler, an analytic memory estimate
(saved activations per token and layer, checked against autograd's saved tensors), and the
measured peak memory of a training step with and without the shared prefix, `CHUNK_SIZE` and
`CHECKPOINT` (full scale on a GPU; on a CPU at a reduced scale given by
--experts/--classes/--virtual/--batch).

Paths that are compared run round-robin in one process after a warm-up round, so a change of
machine load hits them alike; the median and the fastest call are reported. Peak memory is
taken on the first timed call, above the memory in use before it (CUDA:
`torch.cuda.max_memory_allocated`; CPU: the peak resident set size VmHWM, reset through
/proc/self/clear_refs, with large allocations mmapped so that it tracks live memory; see
`PeakMemory`). On a CPU a call whose estimated memory exceeds what is available is skipped
(and marked so) rather than run out of memory. The suites are described in `targets`,
`precision` and `gpu`.
"""
