"""CLIP's frozen text transformer applied to prompt embeddings, with speed options.

The tower is OpenAI's or open_clip's (`clipprompt.towers.text_tower`: LayerScale, a projection
with a bias, causal or not, the model's tokenizer and pooling). Truncation and the shared prefix
need a causal tower that pools at CLIP's BPE EOT (`TextTower.prefix_exact`); another tower
(SigLIP's) refuses them and runs its full context with its padding (`UnsupportedSpeedOption`).

Speed options (all exact up to floating-point rounding, all parity-tested against
`clip.model.CLIP.encode_text` and open_clip's `encode_text`):
- truncation: sequences are cut after the longest EOT of the batch (done by the caller, see
  `PromptAssembler`); CLIP's causal mask makes later positions irrelevant to the EOT feature;
- shared prefix: rows that begin with the same embeddings (SOS and the context before the class
  name, for every class of a prompt form) have the same hidden states at those positions in
  every layer, again because of the causal mask; they run once per group
  (`clipprompt.prefix_sharing`);
- fused attention: `scaled_dot_product_attention` (`is_causal=True` for a causal tower) instead
  of explicit softmax(QKᵀ/√d + mask)·V (`attention="math"` keeps the reference path);
- chunking: at most `chunk_size` prompts per transformer call, bounding peak memory; prompts
  are grouped by length so that each chunk is cut after its own longest EOT (with a shared
  prefix: by group, see `prefix_sharing.prefix_calls`);
- activation checkpointing: each residual block recomputes its activations in backward.

Per-layer prompt tokens (`clipprompt.towers.DeepTextPrompts`: the same tokens for every class,
replacing the context positions before each block) run on every path, so all of the above stays
exact with them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .prefix_sharing import SharedPrefix, pack, prefix_calls, shared_prefix
from .templates import fill
from .tokenization import CLIP_BPE, TokenizerError
from .towers import UnsupportedTower, replace_packed, replace_positions, text_tower


class UnsupportedSpeedOption(UnsupportedTower):
    """Truncation or the shared prefix asked of a text tower on which they are not exact."""


def check_speed_options(tower, truncate, share_prefix, keys=("truncate", "share_prefix")):
    """Raise `UnsupportedSpeedOption` (naming `keys`, e.g. the config keys) unless truncation and
    the shared prefix, where asked, are exact on `tower` (`TextTower.prefix_exact`)."""
    asked = [key for key, on in zip(keys, (truncate, share_prefix)) if on]
    if asked and not tower.prefix_exact:
        raise UnsupportedSpeedOption(
            f"{' and '.join(asked)} would change the text features of {tower.name}: "
            f"{tower.why_not_prefix_exact()}. Set {' and '.join(f'{k} False' for k in asked)}: "
            "its exact reference path (the full context with its padding; docs/BACKBONES.md)"
        )


def transformer_calls(eot, width, chunk_size=0, truncate=True):
    """The transformer calls `TextEncoder` makes for prompts `[N, width]` with these EOT positions
    and no shared prefix: a list of (row indices, sequence length).

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


def causal_mask(length, device):
    """True above the diagonal: the positions a query may not attend to."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class TextEncoder(nn.Module):
    """Maps prompt embeddings `[N, L, d]`, pooled (EOT) positions `[N]`, optionally a
    `SharedPrefix` and `DeepTextPrompts`, to text features `[N, D]`; `B` prompt sets
    `[B, N, L, d]` with the same positions and prefix groups (CoCoOp: one set per image) give
    `[B, N, D]`, no prefix being shared between sets. `tokenizer` and `token_embedding` are the
    tower's (hard prompts are tokenized and embedded with them)."""

    def __init__(
        self,
        clip_model,
        attention="fused",
        chunk_size=0,
        checkpointing=False,
        truncate=True,
        share_prefix=True,
    ):
        super().__init__()
        if attention not in ("fused", "math"):
            raise ValueError(f"attention must be 'fused' or 'math', not {attention!r}")
        tower = text_tower(clip_model)
        check_speed_options(tower, truncate, share_prefix)
        self.blocks = tower.blocks
        self.positional_embedding = tower.positional_embedding
        self.ln_final = tower.ln_final
        self.text_projection = tower.projection
        self.dtype = tower.dtype
        self.causal = tower.causal
        self.prefix_exact = tower.prefix_exact  # hard prompts are truncated where this holds
        self.tokenizer = tower.tokenizer
        # Held outside the module tree: the embedding belongs to the frozen CLIP.
        self._token_embedding = [tower.token_embedding]
        self._tower = tower
        self.attention = attention
        self.chunk_size = chunk_size
        self.checkpointing = checkpointing
        self.truncate = truncate  # False keeps chunks at the width they are given (reference path)
        self.share_prefix = share_prefix  # False ignores SharedPrefix: every row runs every position

    @property
    def token_embedding(self):
        return self._token_embedding[0]

    def forward(self, prompts, eot, prefix=None, deep=None):
        if prompts.dim() == 3:
            return self._encode_rows(prompts, eot, prefix, deep)
        sets, rows = prompts.shape[:2]
        if prefix is not None:
            offset = torch.arange(sets, device=eot.device)[:, None] * (int(prefix.group.max()) + 1)
            prefix = SharedPrefix((prefix.group + offset).flatten(), prefix.length.repeat(sets))
        return self._encode_rows(prompts.flatten(0, 1), eot.repeat(sets), prefix, deep).view(sets, rows, -1)

    def _encode_rows(self, prompts, eot, prefix, deep=None):
        if self.share_prefix and prefix is not None:
            width = None if self.truncate else prompts.shape[1]
            packings = [pack(rows, eot, prefix, width) for rows in prefix_calls(eot, prefix, self.chunk_size)]
            feats = [self._encode_packed(prompts, packing, deep) for packing in packings]
            order = torch.cat([packing.rows for packing in packings])
        else:
            calls = transformer_calls(eot, prompts.shape[1], self.chunk_size, self.truncate)
            if len(calls) == 1:
                return self._encode(prompts, eot, deep)
            feats = [self._encode(prompts[rows, :length], eot[rows], deep) for rows, length in calls]
            order = torch.cat([rows for rows, _ in calls])
        return torch.cat(feats)[order.argsort()]

    def _encode(self, prompts, eot, deep=None):
        x = prompts.to(self.dtype) + self.positional_embedding[: prompts.shape[1]].to(self.dtype)
        for index, block in enumerate(self.blocks):
            tokens = None if deep is None else deep.at_block(index)
            if tokens is not None:
                x = replace_positions(x, deep.positions, tokens)
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, block, x, use_reentrant=False)
            else:
                x = self._block(block, x)
        return self._features(x, eot)

    def _features(self, x, eot):
        # LayerNorm acts per token, so normalising only the pooled rows is exact.
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self._tower.project(self.ln_final(x).to(self.dtype))

    def _block(self, block, x):
        x = x + _layer_scale(block, "ls_1", self._attend(block.attn, block.ln_1(x)))
        return x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))

    def _attend(self, attn, x):
        q, k, v = _heads(attn, x).unbind(2)
        return attn.out_proj(_merge_heads(self._causal_attention(q, k, v)))

    def _causal_attention(self, q, k, v):
        """Attention of `[..., L, dh]` queries, keys and values: causal, unless the tower is not."""
        if self.attention == "fused":
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.causal:
            scores = scores.masked_fill(causal_mask(q.shape[-2], q.device), float("-inf"))
        return scores.softmax(dim=-1) @ v

    def _encode_packed(self, prompts, packing, deep=None):
        """Features of one call's rows (in `packing.rows` order), each shared prefix run once."""
        positions = packing.token_positions
        # A block's first row stands for its prefix: the gradient of the shared positions
        # reaches the context once, through that row.
        x = prompts[packing.token_rows, positions].to(self.dtype)
        x = x + self.positional_embedding[positions].to(self.dtype)
        for index, block in enumerate(self.blocks):
            tokens = None if deep is None else deep.at_block(index)
            if tokens is not None:
                x = replace_packed(x, positions, deep, tokens)
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._packed_block, block, x, packing, use_reentrant=False)
            else:
                x = self._packed_block(block, x, packing)
        return self._tower.project(self.ln_final(x[packing.eot_tokens]).to(self.dtype))

    def _packed_block(self, block, x, packing):
        x = x + _layer_scale(block, "ls_1", self._packed_attend(block.attn, block.ln_1(x), packing))
        return x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))

    def _packed_attend(self, attn, x, packing):
        """Attention over a packed sequence `[T, w]`: each prefix segment causally among
        itself, each bucket's rows over their block's prefix and their own positions."""
        heads, width = attn.num_heads, x.shape[-1]
        parts = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(packing.sizes)
        prefix_keys, outs = [], []
        for (length, blocks), part in zip(packing.prefixes, parts):
            q, k, v = part.view(blocks, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
            prefix_keys.append((k, v))
            outs.append(_merge_heads(self._causal_attention(q, k, v)).flatten(0, 1))
        for (segment, blocks, _, span), part in zip(packing.buckets, parts[len(packing.prefixes) :]):
            k, v = prefix_keys[segment]
            if blocks is not None:
                k, v = k[blocks], v[blocks]
            outs.append(_rows_attention(part.view(-1, span, 3, heads, width // heads), k, v).flatten(0, 1))
        return attn.out_proj(torch.cat(outs))


def _layer_scale(block, name, x):
    """open_clip's LayerScale (`ls_1`, `ls_2`) of a residual branch; OpenAI's blocks have none."""
    scale = getattr(block, name, None)
    return x if scale is None else scale(x)


def tokenize(texts, truncate=True, tokenizer=None):
    """Token ids `[N, L]` of full texts by `tokenizer` (default CLIP's BPE, 77 positions):
    L = the longest EOT position + 1 when truncating (a tokenizer that pools at CLIP's BPE EOT;
    exact for a causal tower only), else the context length. A text too long for the context is
    refused."""
    tokenizer = tokenizer or CLIP_BPE
    if truncate and not (tokenizer.is_clip_bpe and tokenizer.pool == "argmax"):
        raise TokenizerError(f"texts cannot be truncated for {tokenizer}: tokenize them with truncate=False")
    ids = tokenizer(texts)
    if truncate:
        ids = ids[:, : int(tokenizer.pool_positions(ids).max()) + 1]
    return ids


@torch.no_grad()
def encode_texts(encoder, token_embedding, texts, batch_size=1024, normalize=True, groups=None):
    """Frozen text features of hard prompts (computed once and cached by the callers), tokenized
    by the encoder's tokenizer (the model's own), cut after the longest EOT where that is exact.

    `groups` (one id per text, e.g. its template; default: all one group) says which texts the
    encoder may treat as one prefix group: those share their longest common token prefix.
    """
    feats = []
    device = token_embedding.weight.device
    tokenizer = getattr(encoder, "tokenizer", CLIP_BPE)
    truncate = getattr(encoder, "prefix_exact", True)  # a bidirectional tower sees its padding
    groups = torch.tensor(groups if groups is not None else [0] * len(texts), dtype=torch.long)
    for start in range(0, len(texts), batch_size):
        ids = tokenize(texts[start : start + batch_size], truncate, tokenizer).to(device)
        eot = tokenizer.pool_positions(ids)
        prefix = shared_prefix(ids, groups[start : start + batch_size].to(device), eot)
        feats.append(encoder(token_embedding(ids), eot, prefix).float())
    feats = torch.cat(feats)
    return F.normalize(feats, dim=-1) if normalize else feats


def encode_templates(encoder, token_embedding, templates, classnames):
    """Frozen normalised features `[T, C, D]` of every template filled with every class name."""
    texts = [fill(t, c) for t in templates for c in classnames]
    groups = [t for t in range(len(templates)) for _ in classnames]
    feats = encode_texts(encoder, token_embedding, texts, groups=groups)
    return feats.view(len(templates), len(classnames), -1)


def _rows_attention(qkv, prefix_k, prefix_v):
    """Attention of rows `qkv` `[G * m, S, 3, h, dh]` (m rows from each of G blocks, block by
    block) whose queries see their block's prefix keys and values `[G, h, P, dh]` and their own
    keys up to themselves, under one softmax: `[G * m, S, h * dh]`.

    Computed explicitly whatever `attention` says: a fused kernel would need every row's copy
    of its block's prefix keys and values, and would keep those for backward. Folding the m
    rows of a block into one query axis scores them against the block's prefix in one product,
    with no copy.
    """
    blocks, heads, length, _ = prefix_k.shape
    rows, span = qkv.shape[:2]
    m = rows // blocks
    q, k, v = qkv.unbind(2)  # [G m, S, h, dh]
    scale = 1 / math.sqrt(q.shape[-1])
    folded = q.reshape(blocks, m * span, heads, -1).transpose(1, 2)  # [G, h, m S, dh]
    to_prefix = (folded @ prefix_k.transpose(-2, -1)) * scale  # [G, h, m S, P]
    to_own = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) * scale  # [G m, h, S, S]
    to_own = to_own.masked_fill(causal_mask(span, q.device), float("-inf"))
    scores = torch.cat(
        [
            to_prefix.view(blocks, heads, m, span, length),
            to_own.view(blocks, m, heads, span, span).transpose(1, 2),
        ],
        dim=-1,
    )
    probs = scores.softmax(dim=-1)  # [G, h, m, S, P + S]
    out = probs[..., :length].reshape(blocks, heads, m * span, length) @ prefix_v
    out = out.view(blocks, heads, m, span, -1)
    out = out + probs[..., length:] @ v.view(blocks, m, span, heads, -1).permute(0, 3, 1, 2, 4)
    return out.permute(0, 2, 3, 1, 4).reshape(rows, span, -1)


def _heads(attn, x):
    """Queries, keys and values of `x` `[n, L, w]` per head: `[n, h, 3, L, dh]` (unbind dim 2)."""
    n, length = x.shape[:2]
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(n, length, 3, attn.num_heads, -1)
    return qkv.permute(0, 3, 2, 1, 4)


def _merge_heads(x):
    """`[n, h, L, dh]` -> `[n, L, h * dh]`."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)
