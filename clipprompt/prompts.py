"""Vectorised assembly of soft-prompt token embeddings.

Every (form, class) prompt is a row of token ids in which some positions are learnable
context slots. Assembly is one embedding lookup plus one indexed write of the context
vectors, for all rows at once: no Python loop over classes or experts per step.
"""

import torch
from torch import nn

from .prefix_sharing import SharedPrefix, shared_prefix
from .tokenization import CLIP_BPE, TokenizerError


class PromptAssembler(nn.Module):
    """Token embeddings of `forms × classnames` prompts with learnable context slots.

    Rows are ordered form-major: row `g * C + c` is form g filled with class c. Context
    vectors are read from a flat table: with shared context (CoOp, MoCoOp experts) the table
    has `sum_g n_ctx(g)` rows, form g owning a contiguous block (before-vectors, then
    after-vectors); with class-specific context (CoOp's CSC) it has `C * sum_g n_ctx(g)`
    rows, class c owning block c. A batch of tables `[B, S, d]` (CoCoOp: one context per
    image) gives a batch of prompts `[B, rows, L, d]`.

    Rows are laid out by `tokenizer` (`clipprompt.tokenization`; default CLIP's BPE): its special
    tokens around the pieces, its padding, its context length, and the pooled position of each
    row (`eot`: the EOT for CLIP's towers, the last position for SigLIP's). Sequences are cut
    after the longest EOT (`truncate=True`): CLIP's causal mask makes the EOT feature independent
    of later positions, so this is exact; only a tokenizer that is CLIP's BPE with EOT pooling
    allows it (a causal tower is the text encoder's condition). `truncate=False` pads to the
    context length, as the model's own tokenizer does (the reference path).

    The rows of one form are a prefix group (`SharedPrefix`): they begin with the same
    embeddings up to the class name (SOS and the shared context before it; SOS alone with
    class-specific context), which the text encoder then runs once per form (per table, for a
    batch of tables).
    """

    def __init__(
        self,
        forms,
        classnames,
        token_embedding,
        context_length=None,
        class_specific=False,
        truncate=True,
        tokenizer=None,
    ):
        super().__init__()
        tokenizer = tokenizer or CLIP_BPE
        if truncate and not (tokenizer.is_clip_bpe and tokenizer.pool == "argmax"):
            raise TokenizerError(
                f"prompts cannot be truncated exactly for the tokenizer {tokenizer.name} with "
                f"{tokenizer.pool!r} pooling: build them with truncate=False (the full context)"
            )
        context_length = context_length or tokenizer.context_length
        self.forms = list(forms)
        self.num_classes = len(classnames)
        self.class_specific = class_specific
        self.truncate = truncate
        # Held outside the module tree: the embedding belongs to the frozen CLIP model.
        self._token_embedding = [token_embedding]

        ctx_per_class = sum(form.n_ctx for form in self.forms)
        rows, slots = [], []
        offset = 0
        for form in self.forms:
            for c, name in enumerate(classnames):
                ids, is_ctx = form.token_row(name, tokenizer)
                if len(ids) > context_length:
                    raise ValueError(
                        f"the prompt of class {name!r} has {len(ids)} tokens, more than the text tower's "
                        f"{context_length} positions: use fewer context vectors or a shorter template"
                    )
                base = offset + (c * ctx_per_class if class_specific else 0)
                slot, k = [], 0
                for flag in is_ctx:
                    slot.append(base + k if flag else -1)
                    k += flag
                rows.append(ids)
                slots.append(slot)
            offset += form.n_ctx
        length = max(map(len, rows)) if truncate else context_length
        token_ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
        slot_ids = torch.full((len(rows), length), -1, dtype=torch.long)
        for i, (ids, slot) in enumerate(zip(rows, slots)):
            token_ids[i, : len(ids)] = torch.tensor(ids)
            slot_ids[i, : len(slot)] = torch.tensor(slot)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("slot_ids", slot_ids, persistent=False)
        # Context slots marked -1 for the pooling rule: their placeholder id is no EOT or EOS.
        eot = tokenizer.pool_positions(token_ids.masked_fill(slot_ids >= 0, -1))
        self.register_buffer("eot", eot, persistent=False)
        # Equal (token id, context slot) pairs mean equal embeddings, for any context table.
        form_of_row = torch.arange(len(self.forms)).repeat_interleave(self.num_classes)
        prefix = shared_prefix(torch.stack([token_ids, slot_ids], dim=-1), form_of_row, eot)
        self.register_buffer("prefix_group", prefix.group, persistent=False)
        self.register_buffer("prefix_length", prefix.length, persistent=False)
        self.table_size = ctx_per_class * (self.num_classes if class_specific else 1)

    @property
    def num_rows(self):
        return self.token_ids.shape[0]

    def init_table(self, std=0.02, generator=None):
        """Initial context table: token embeddings of each form's init words, else N(0, std²)."""
        weight = self.token_embedding.weight
        per_class = []
        for form in self.forms:
            if form.init_ids is not None:
                ids = torch.tensor(form.init_ids, device=weight.device)
                per_class.append(weight[ids].detach().float().cpu())
            else:
                per_class.append(torch.randn(form.n_ctx, weight.shape[1], generator=generator) * std)
        table = torch.cat(per_class) if per_class else torch.zeros(0, weight.shape[1])
        if self.class_specific:
            if any(form.init_ids is None for form in self.forms):
                table = torch.randn(self.num_classes, *table.shape, generator=generator) * std
            else:
                table = table.repeat(self.num_classes, 1, 1)
            table = table.flatten(0, 1)
        return table

    @property
    def token_embedding(self):
        return self._token_embedding[0]

    def forward(self, table, rows=None):
        """Assembled embeddings `[n, L', d]` (or `[B, n, L', d]`), EOT positions `[n]` and the
        rows' `SharedPrefix`: the arguments of `TextEncoder`.

        `rows` selects prompts (a slice or index tensor); L' is the longest EOT + 1 among them
        when truncating, so chunks of short prompts run shorter sequences.
        """
        token_ids, slot_ids, eot = self.token_ids, self.slot_ids, self.eot
        prefix = SharedPrefix(self.prefix_group, self.prefix_length)
        if rows is not None:
            token_ids, slot_ids, eot = token_ids[rows], slot_ids[rows], eot[rows]
            prefix = SharedPrefix(prefix.group[rows], prefix.length[rows])
            if self.truncate:
                length = int(eot.max()) + 1
                token_ids, slot_ids = token_ids[:, :length], slot_ids[:, :length]
        embeds = self.token_embedding(token_ids)
        is_ctx = slot_ids >= 0
        ctx = table[..., slot_ids[is_ctx], :].to(embeds.dtype)
        if table.dim() == 2:
            return embeds.index_put((is_ctx,), ctx), eot, prefix
        embeds = embeds.expand(table.shape[0], *embeds.shape).clone()
        embeds[:, is_ctx] = ctx
        return embeds, eot, prefix
