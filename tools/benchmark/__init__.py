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
