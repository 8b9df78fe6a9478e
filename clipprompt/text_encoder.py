"""CLIP's frozen text transformer applied to prompt embeddings, with speed options.

Speed options (all exact up to floating-point rounding, all parity-tested against
`clip.model.CLIP.encode_text`):
- truncation: sequences are cut after the longest EOT of the batch (done by the caller, see
  `PromptAssembler`); CLIP's causal mask makes later positions irrelevant to the EOT feature;
- fused attention: `scaled_dot_product_attention(is_causal=True)` instead of explicit
  softmax(QKᵀ/√d + mask)·V (`attention="math"` keeps the reference path);
- chunking: at most `chunk_size` prompts per transformer call, bounding peak memory; prompts
  are grouped by length so that each chunk is cut after its own longest EOT;
- activation checkpointing: each residual block recomputes its activations in backward.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .templates import EOT_ID, SOT_ID, bpe, fill


def transformer_calls(eot, width, chunk_size=0, truncate=True):
    """The transformer calls `TextEncoder` makes for prompts `[N, width]` with these EOT positions:
    a list of (row indices, sequence length).

    One call over all rows at `width` unless `chunk_size` splits them. Chunks take the prompts
    in order of length, so that each is cut after its own longest EOT (rows do not interact in
    the transformer, so the order changes no feature); `truncate=False` keeps row order and
    full width (the reference path).
    """
    if not chunk_size or len(eot) <= chunk_size:
        return [(torch.arange(len(eot), device=eot.device), width)]
    if not truncate:
        return [(rows, width) for rows in torch.arange(len(eot), device=eot.device).split(chunk_size)]
    return [(rows, int(eot[rows].max()) + 1) for rows in eot.argsort().split(chunk_size)]


class TextEncoder(nn.Module):
    """Maps prompt embeddings `[N, L, d]` and EOT positions `[N]` to text features `[N, D]`."""

    def __init__(self, clip_model, attention="fused", chunk_size=0, checkpointing=False, truncate=True):
        super().__init__()
        if attention not in ("fused", "math"):
            raise ValueError(f"attention must be 'fused' or 'math', not {attention!r}")
        self.blocks = clip_model.transformer.resblocks
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype
        self.attention = attention
        self.chunk_size = chunk_size
        self.checkpointing = checkpointing
        self.truncate = truncate  # False keeps chunks at the width they are given (reference path)

    def forward(self, prompts, eot):
        calls = transformer_calls(eot, prompts.shape[1], self.chunk_size, self.truncate)
        if len(calls) == 1:
            return self._encode(prompts, eot)
        feats = [self._encode(prompts[rows, :length], eot[rows]) for rows, length in calls]
        order = torch.cat([rows for rows, _ in calls])
        return torch.cat(feats)[order.argsort()]

    def _encode(self, prompts, eot):
        x = prompts.to(self.dtype) + self.positional_embedding[: prompts.shape[1]].to(self.dtype)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, block, x, use_reentrant=False)
            else:
                x = self._block(block, x)
        # LayerNorm acts per token, so normalising only the EOT rows is exact.
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self.ln_final(x).to(self.dtype) @ self.text_projection

    def _block(self, block, x):
        x = x + self._attend(block.attn, block.ln_1(x))
        return x + block.mlp(block.ln_2(x))

    def _attend(self, attn, x):
        n, length, width = x.shape
        heads = attn.num_heads
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        if self.attention == "fused":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(width // heads)
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            out = scores.masked_fill(causal, float("-inf")).softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(n, length, width)
        return attn.out_proj(out)


def tokenize(texts, context_length=77, truncate=True):
    """Token ids `[N, L]` of full texts; L = longest EOT + 1 when truncating, else 77."""
    rows = [[SOT_ID] + bpe(text) + [EOT_ID] for text in texts]
    too_long = [t for t, r in zip(texts, rows) if len(r) > context_length]
    if too_long:
        raise ValueError(f"text longer than {context_length} tokens: {too_long[0]!r}")
    length = max(map(len, rows)) if truncate else context_length
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids


@torch.no_grad()
def encode_texts(encoder, token_embedding, texts, batch_size=1024, normalize=True):
    """Frozen text features of hard prompts (computed once and cached by the callers)."""
    feats = []
    device = token_embedding.weight.device
    for start in range(0, len(texts), batch_size):
        ids = tokenize(texts[start : start + batch_size]).to(device)
        feats.append(encoder(token_embedding(ids), ids.argmax(dim=1)).float())
    feats = torch.cat(feats)
    return F.normalize(feats, dim=-1) if normalize else feats


def encode_templates(encoder, token_embedding, templates, classnames):
    """Frozen normalised features `[T, C, D]` of every template filled with every class name."""
    feats = encode_texts(encoder, token_embedding, [fill(t, c) for t in templates for c in classnames])
    return feats.view(len(templates), len(classnames), -1)
