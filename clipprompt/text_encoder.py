"""CLIP's frozen text transformer applied to prompt embeddings, with speed options.

Speed options (all exact up to floating-point rounding, all parity-tested against
`clip.model.CLIP.encode_text`):
- truncation: sequences are cut after the longest EOT of the batch (done by the caller, see
  `PromptAssembler`); CLIP's causal mask makes later positions irrelevant to the EOT feature;
- shared prefix: rows that begin with the same embeddings (SOS and the context before the class
  name, for every class of a prompt form) have the same hidden states at those positions in
  every layer, again because of the causal mask; they run once per group (`SharedPrefix`, see
  `TextEncoder._encode_shared`);
- fused attention: `scaled_dot_product_attention(is_causal=True)` instead of explicit
  softmax(QKᵀ/√d + mask)·V (`attention="math"` keeps the reference path);
- chunking: at most `chunk_size` prompts per transformer call, bounding peak memory; prompts
  are grouped by length so that each chunk is cut after its own longest EOT;
- activation checkpointing: each residual block recomputes its activations in backward.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .templates import EOT_ID, SOT_ID, bpe, fill


class SharedPrefix(NamedTuple):
    """Which prompt rows begin with the same embeddings: the rows of one `group` are identical
    at the positions before their `length` (equal within a group, at most each row's EOT
    position, so that every row keeps its EOT among its own positions)."""

    group: torch.Tensor  # [N] group id of each row
    length: torch.Tensor  # [N] positions the row shares with the rest of its group


def shared_prefix(keys, group, eot):
    """The `SharedPrefix` of rows whose embeddings are determined by `keys` `[N, L]` or
    `[N, L, k]` (token ids, context slots): each group shares its longest common run of keys
    from position 0, cut at the group's first EOT."""
    length = torch.empty_like(eot)
    same_keys = keys.reshape(keys.shape[0], keys.shape[1], -1)
    for g in group.unique():
        rows = (group == g).nonzero().squeeze(1)
        same = (same_keys[rows] == same_keys[rows[:1]]).all(dim=2).all(dim=0)
        common = int(same.long().cumprod(0).sum())
        length[rows] = min(common, int(eot[rows].min()))
    return SharedPrefix(group, length)


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


def shared_prefix_calls(eot, prefix, chunk_size=0):
    """The transformer calls `TextEncoder` makes for rows with a `SharedPrefix`: a list of
    (row indices, prefix length P, number of blocks).

    The rows of a call form blocks of equal size, each the rows of one group (or, with
    `chunk_size`, a part of them of at most `chunk_size` rows): the P positions of a block run
    once. A call holds the blocks of one prefix length and one block size, at most
    `chunk_size` rows when chunking; a group split over several blocks runs its prefix once per
    block. Within a group, rows are taken in order of length, so that parts are cut short.
    """
    order = torch.arange(len(eot), device=eot.device)
    for key in (eot, prefix.group, prefix.length):  # stable sorts: by length, group, then EOT
        order = order[key[order].argsort(stable=True)]
    _, sizes = torch.unique_consecutive(prefix.group[order], return_counts=True)
    group_rows = order.split(sizes.tolist())
    lengths = prefix.length[torch.stack([rows[0] for rows in group_rows])].tolist()
    blocks = {}  # (prefix length, block size) -> row blocks
    for rows, length in zip(group_rows, lengths):
        for block in rows.split(chunk_size) if chunk_size else (rows,):
            blocks.setdefault((length, len(block)), []).append(block)
    calls = []
    for (length, size), same in blocks.items():
        per_call = max(1, chunk_size // size) if chunk_size else len(same)
        for start in range(0, len(same), per_call):
            part = same[start : start + per_call]
            calls.append((torch.cat(part), length, len(part)))
    return calls


def causal_mask(length, device):
    """True above the diagonal: the positions a query may not attend to."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class TextEncoder(nn.Module):
    """Maps prompt embeddings `[N, L, d]`, EOT positions `[N]` and optionally a `SharedPrefix`
    to text features `[N, D]`; `B` prompt sets `[B, N, L, d]` with the same EOT positions and
    prefix groups (CoCoOp: one set per image) give `[B, N, D]`, no prefix being shared
    between sets."""

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
        self.blocks = clip_model.transformer.resblocks
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype
        self.attention = attention
        self.chunk_size = chunk_size
        self.checkpointing = checkpointing
        self.truncate = truncate  # False keeps chunks at the width they are given (reference path)
        self.share_prefix = share_prefix  # False ignores SharedPrefix: every row runs every position

    def forward(self, prompts, eot, prefix=None):
        if prompts.dim() == 3:
            return self._encode_rows(prompts, eot, prefix)
        sets, rows = prompts.shape[:2]
        if prefix is not None:
            offset = torch.arange(sets, device=eot.device)[:, None] * (int(prefix.group.max()) + 1)
            prefix = SharedPrefix((prefix.group + offset).flatten(), prefix.length.repeat(sets))
        return self._encode_rows(prompts.flatten(0, 1), eot.repeat(sets), prefix).view(sets, rows, -1)

    def _encode_rows(self, prompts, eot, prefix):
        if self.share_prefix and prefix is not None:
            calls = shared_prefix_calls(eot, prefix, self.chunk_size)
            feats = [self._encode_shared(prompts[rows], eot[rows], p, n) for rows, p, n in calls]
        else:
            calls = transformer_calls(eot, prompts.shape[1], self.chunk_size, self.truncate)
            if len(calls) == 1:
                return self._encode(prompts, eot)
            feats = [self._encode(prompts[rows, :length], eot[rows]) for rows, length in calls]
        order = torch.cat([rows for rows, *_ in calls])
        return torch.cat(feats)[order.argsort()]

    def _encode(self, prompts, eot):
        x = prompts.to(self.dtype) + self.positional_embedding[: prompts.shape[1]].to(self.dtype)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, block, x, use_reentrant=False)
            else:
                x = self._block(block, x)
        return self._features(x, eot)

    def _features(self, x, eot):
        # LayerNorm acts per token, so normalising only the EOT rows is exact.
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        return self.ln_final(x).to(self.dtype) @ self.text_projection

    def _block(self, block, x):
        x = x + self._attend(block.attn, block.ln_1(x))
        return x + block.mlp(block.ln_2(x))

    def _attend(self, attn, x):
        q, k, v = _heads(attn, x).unbind(2)
        return attn.out_proj(_merge_heads(self._causal_attention(q, k, v)))

    def _causal_attention(self, q, k, v):
        """Causal attention of `[..., L, dh]` queries, keys and values."""
        if self.attention == "fused":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return scores.masked_fill(causal_mask(q.shape[-2], q.device), float("-inf")).softmax(dim=-1) @ v

    def _encode_shared(self, prompts, eot, length, blocks):
        """Features of rows forming `blocks` equal blocks whose rows share their first `length`
        positions: those run once per block (`[blocks, length]`), the rows' own positions
        (`[N, S]`) attend to their block's prefix and to themselves."""
        width = int(eot.max()) + 1 if self.truncate else prompts.shape[1]
        position = self.positional_embedding.to(self.dtype)
        # Each block's first row stands for the block: gradients of the shared positions reach
        # the context once, through it.
        prefix = prompts[:: prompts.shape[0] // blocks, :length].to(self.dtype) + position[:length]
        own = prompts[:, length:width].to(self.dtype) + position[length:width]
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                prefix, own = checkpoint(self._shared_block, block, prefix, own, use_reentrant=False)
            else:
                prefix, own = self._shared_block(block, prefix, own)
        return self._features(own, eot - length)

    def _shared_block(self, block, prefix, own):
        prefix_out, own_out = self._shared_attend(block.attn, block.ln_1(prefix), block.ln_1(own))
        prefix, own = prefix + prefix_out, own + own_out
        return prefix + block.mlp(block.ln_2(prefix)), own + block.mlp(block.ln_2(own))

    def _shared_attend(self, attn, prefix, own):
        """Attention of prefix blocks `[G, P, w]` (causal, among themselves) and of the rows'
        own positions `[G * m, S, w]`, whose queries see their block's P prefix keys and their
        own keys up to themselves, under one softmax.

        Computed explicitly for the rows (whatever `attention` says): a fused kernel would
        need every row's copy of its block's prefix keys and values, and would keep those for
        backward. Folding the m rows of a block into one query axis scores them against the
        block's prefix keys in one product, with no copy.
        """
        blocks, length, width = prefix.shape
        rows, span, _ = own.shape
        m, heads = rows // blocks, attn.num_heads
        q, k, v = _heads(attn, prefix).unbind(2)
        prefix_out = self._causal_attention(q, k, v)

        qkv = F.linear(own, attn.in_proj_weight, attn.in_proj_bias).view(rows, span, 3, heads, -1)
        q_own, k_own, v_own = qkv.unbind(2)  # [N, S, h, dh]
        scale = 1 / math.sqrt(q_own.shape[-1])
        folded = q_own.reshape(blocks, m * span, heads, -1).transpose(1, 2)  # [G, h, m S, dh]
        to_prefix = (folded @ k.transpose(-2, -1)) * scale  # [G, h, m S, P]
        to_own = (q_own.transpose(1, 2) @ k_own.permute(0, 2, 3, 1)) * scale  # [N, h, S, S]
        to_own = to_own.masked_fill(causal_mask(span, own.device), float("-inf"))
        scores = torch.cat(
            [
                to_prefix.view(blocks, heads, m, span, length),
                to_own.view(blocks, m, heads, span, span).transpose(1, 2),
            ],
            dim=-1,
        )
        probs = scores.softmax(dim=-1)  # [G, h, m, S, P + S]
        out = (probs[..., :length].reshape(blocks, heads, m * span, length) @ v).view(
            blocks, heads, m, span, -1
        )
        out = out + probs[..., length:] @ v_own.view(blocks, m, span, heads, -1).permute(0, 3, 1, 2, 4)
        out = out.permute(0, 2, 3, 1, 4).reshape(rows, span, width)
        return attn.out_proj(_merge_heads(prefix_out)), attn.out_proj(out)


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
def encode_texts(encoder, token_embedding, texts, batch_size=1024, normalize=True, groups=None):
    """Frozen text features of hard prompts (computed once and cached by the callers).

    `groups` (one id per text, e.g. its template; default: all one group) says which texts the
    encoder may treat as one prefix group: those share their longest common token prefix.
    """
    feats = []
    device = token_embedding.weight.device
    groups = torch.tensor(groups if groups is not None else [0] * len(texts), dtype=torch.long)
    for start in range(0, len(texts), batch_size):
        ids = tokenize(texts[start : start + batch_size]).to(device)
        eot = ids.argmax(dim=1)
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


def _heads(attn, x):
    """Queries, keys and values of `x` `[n, L, w]` per head: `[n, h, 3, L, dh]` (unbind dim 2)."""
    n, length = x.shape[:2]
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(n, length, 3, attn.num_heads, -1)
    return qkv.permute(0, 3, 2, 1, 4)


def _merge_heads(x):
    """`[n, h, L, dh]` -> `[n, L, h * dh]`."""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)
