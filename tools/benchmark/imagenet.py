"""MoCoOp at ImageNet scale: the analytic memory model of a training step (checked against
autograd's saved tensors) and measured peak memory with and without CHUNK_SIZE / CHECKPOINT."""

import gc
from types import SimpleNamespace

import torch

from clipprompt.clip_loading import build_tiny_clip, convert_weights
from clipprompt.prefix_sharing import SharedPrefix, pack
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm
from clipprompt.text_encoder import TextEncoder
from tools.benchmark.build import VIT_B16, classnames, expert_groups, name_stats
from tools.benchmark.measure import round_robin
from tools.benchmark.paths import call_positions, train_step

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

    text: `TextEncoder._block` (frozen weights, as in every trainer); text_shared: its block
    over a packed sequence (`_packed_block`: 4 rows of 8 own positions after a shared prefix of
    8); image: the image tower's block with trainable LayerNorms (MoCoOp release preset),
    input [tokens, batch, 768].
    """
    clip_model = build_tiny_clip(
        **{**VIT_B16, "image_resolution": 32, "vision_layers": 1, "transformer_layers": 1}
    )
    if dtype == torch.float16:
        convert_weights(clip_model)
    clip_model = clip_model.to(device).requires_grad_(False)
    encoder = TextEncoder(clip_model)
    width = VIT_B16["transformer_width"]
    if tower == "text":
        n, length = 4, 16
        x = torch.randn(n, length, width, device=device, dtype=encoder.dtype, requires_grad=True)
        block = lambda: encoder._block(encoder.blocks[0], x)
    elif tower == "text_shared":
        eot = torch.full((4,), 15, device=device)
        prefix = SharedPrefix(
            torch.zeros(4, dtype=torch.long, device=device), torch.full((4,), 8, device=device)
        )
        packing = pack(torch.arange(4, device=device), eot, prefix)
        n, length = 1, sum(packing.sizes)
        x = torch.randn(length, width, device=device, dtype=encoder.dtype, requires_grad=True)
        block = lambda: encoder._packed_block(encoder.blocks[0], x, packing)
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

    def keep(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
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


def encoding_bytes(positions, grad, elem=4, layers=12, width=512):
    """A rough peak of one text encoding whose transformer calls run `positions`: with `grad`,
    what autograd keeps for backward (`analytic_block_bytes` per position and block), plus the
    transient tensors of one block of the largest call (about 24 values per position). Used to
    skip a call that cannot fit, not reported as a measurement."""
    if not positions:
        return 0
    kept = sum(positions) * layers * analytic_block_bytes(width, elem=elem)[0] if grad else 0
    return kept + max(positions) * 24 * width * elem


def mocoop_prompts(names, experts):
    """(EOT positions, padded length, `SharedPrefix`, template count) of MoCoOp's prompts on
    ImageNet's first `experts` experts, from the real prompt assembler."""
    sizes, templates = expert_groups("imagenet", experts)
    forms = [PromptForm.from_template(templates[sum(sizes[:g])]) for g in range(len(sizes))]
    # Only the token ids are read: a 1 x 1 embedding stands in for CLIP's table.
    assembler = PromptAssembler(forms, names, torch.nn.Embedding(1, 1))
    prefix = SharedPrefix(assembler.prefix_group, assembler.prefix_length)
    return assembler.eot, assembler.token_ids.shape[1], prefix, len(templates)


def mocoop_tokens(prompts, chunk, share):
    """Rows and sequence positions of one MoCoOp training step over `mocoop_prompts`:
    `positions` as TextEncoder runs them (with `share`, each shared prefix once per call and
    each row's own positions; without, padded to the longest EOT of the call or of each
    chunk), `to_eot` the prompts' own lengths (no padding, no sharing)."""
    eot, length, prefix, templates = prompts
    encoder = SimpleNamespace(share_prefix=share, truncate=True, chunk_size=chunk)
    calls = call_positions(encoder, eot, length, prefix)
    return {
        "rows": len(eot),
        "longest": length,
        "positions": sum(calls),
        "to_eot": int((eot + 1).sum()),
        "largest_call": max(calls),
        "templates": templates,
    }


def memory_estimate(tokens, text_classes, per_token, elem, checkpointing, share, layers=12, width=512):
    """Bytes a MoCoOp (paper) training step adds to the resident model, by component.

    Without checkpointing every block keeps its activations until backward; with it, a block
    keeps only its input and backward recomputes one block of one encoder call (chunk) at a
    time. The assembled prompt embeddings (fp32 token embeddings `[rows, longest, width]`,
    looked up then written into) live through the forward pass, and with a shared prefix so
    does the packed input gathered from them; the paper's text loss keeps [C, C] fp32 logits
    and their softmax per template.
    """
    if checkpointing:
        text = tokens["positions"] * layers * width * elem + tokens["largest_call"] * per_token
    else:
        text = tokens["positions"] * layers * per_token
    parts = {
        "text activations": text,
        "prompt embeddings": 2 * tokens["rows"] * tokens["longest"] * width * 4
        + (tokens["positions"] * width * elem if share else 0),
        "text loss": 2 * tokens["templates"] * text_classes**2 * 4,
    }
    return sum(parts.values()), parts


# (SHARE_PREFIX, CHUNK_SIZE given?, CHECKPOINT) of the rows: every memory option on the default
# path, and the path without the shared prefix, alone and with both options.
ROWS = (
    (True, False, False),
    (True, True, False),
    (True, False, True),
    (True, True, True),
    (False, False, False),
    (False, True, True),
)


def per_token_bytes(device):
    out = {}
    for dtype in (torch.float16, torch.float32):
        label = "fp16" if dtype == torch.float16 else "fp32"
        out[label] = {
            "text_analytic": analytic_block_bytes(elem=dtype.itemsize)[0],
            **{
                f"{t}_autograd": saved_bytes_per_token(t, dtype, device)
                for t in ("text", "text_shared", "image")
            },
        }
    return out


def estimate_row(prompts, share, chunk, ckpt, text_classes, per_token, elem):
    tokens = mocoop_tokens(prompts, chunk, share)
    per = per_token["text_shared_autograd" if share else "text_autograd"]
    total, parts = memory_estimate(tokens, text_classes, per, elem, ckpt, share)
    return {
        "SHARE_PREFIX": share,
        "CHUNK_SIZE": chunk,
        "CHECKPOINT": ckpt,
        **tokens,
        "estimate_bytes": total,
        "parts": parts,
    }


def imagenet_scale(args, device, bench, peak, weight_bytes):
    per_token = per_token_bytes(device)
    full = IMAGENET
    full_classes = full["classes"] + full["virtual"]
    full_names, source = classnames(args, full_classes)
    image_tokens = full["batch"] * ((VIT_B16["image_resolution"] // VIT_B16["vision_patch_size"]) ** 2 + 1)
    release_image = image_tokens * VIT_B16["vision_layers"] * per_token["fp16"]["image_autograd"]
    full_rows = []
    full_prompts = mocoop_prompts(full_names, full["experts"])
    for share, chunked, ckpt in ROWS:
        row = estimate_row(
            full_prompts, share, full_classes if chunked else 0, ckpt, full_classes, per_token["fp16"], 2
        )
        row["estimate_bytes"] += weight_bytes["fp16"]
        row["release_extra_bytes"] = release_image
        row["fits_80GB"] = row["estimate_bytes"] + release_image <= GPU_BUDGET * GPU_MEMORY
        full_rows.append(row)
    return {
        "per_token_per_layer_bytes": per_token,
        "names": {"source": source, **name_stats(full_names)},
        "full_scale": {**full, "prec": "fp16", "weights_bytes": weight_bytes["fp16"], "rows": full_rows},
        "measured_scale": measured_scale(args, device, bench, peak, per_token),
    }


def measured_scale(args, device, bench, peak, per_token):
    """Peak memory and time of a MoCoOp training step on each row's options: full scale on a
    GPU; on a CPU a reduced one (20,000 prompts take minutes there)."""
    text_classes = args.classes + args.virtual
    chunk = args.chunk_size or text_classes
    names, _ = classnames(args, text_classes)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device),
        "label": torch.randint(0, args.classes, (args.batch,), generator=gen).to(device),
    }
    elem = 2 if args.prec == "fp16" else 4
    label = "fp16" if args.prec == "fp16" else "fp32"
    prompts = mocoop_prompts(names, args.experts)
    rows = []
    for share, chunked, ckpt in ROWS:
        row = estimate_row(
            prompts, share, chunk if chunked else 0, ckpt, text_classes, per_token[label], elem
        )
        opts = [
            "TRAINER.TEXT_ENCODER.SHARE_PREFIX", str(share),
            "TRAINER.TEXT_ENCODER.CHUNK_SIZE", str(row["CHUNK_SIZE"]),
            "TRAINER.TEXT_ENCODER.CHECKPOINT", str(ckpt),
        ]  # fmt: skip
        trainer = bench.build("MoCoOp", names[: args.classes], names[args.classes :], opts)
        trainer.set_model_mode("train")
        estimate = {"step": row["estimate_bytes"]}
        res = round_robin({"step": train_step(trainer, batch)}, args, device, peak, estimate)["step"]
        row.update({k: res[k] for k in ("peak_bytes", "median_s", "times_s", "oom", "skipped")})
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"measured SHARE_PREFIX {share} CHUNK_SIZE {row['CHUNK_SIZE']} CHECKPOINT {ckpt}", flush=True)
    return {
        "experts": args.experts,
        "classes": args.classes,
        "virtual": args.virtual,
        "batch": args.batch,
        "prec": args.prec,
        "rows": rows,
    }
