"""MoCoOp at ImageNet scale: the analytic memory model of a training step (checked against
autograd's saved tensors) and measured peak memory with and without CHUNK_SIZE / CHECKPOINT."""

import gc

import torch

from clipprompt.clip_loading import build_tiny_clip, convert_weights
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm
from clipprompt.text_encoder import TextEncoder
from tools.benchmark.build import VIT_B16, classnames, expert_groups, name_stats
from tools.benchmark.measure import round_robin
from tools.benchmark.table import call_positions, train_step

# ImageNet: 20 expert groups in configs/datasets/imagenet.yaml, 1000 classes (500 base + 500 new).
IMAGENET = {"experts": 20, "classes": 500, "virtual": 500, "batch": 32}
IMAGENET_CPU = {"experts": 4, "classes": 25, "virtual": 25, "batch": 4}
GPU_MEMORY = 80 * 10**9
# Share of the GPU an estimate may fill: the rest is left to the CUDA context, cuBLAS/cuDNN
# workspaces and allocator fragmentation.
GPU_BUDGET = 0.85


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
