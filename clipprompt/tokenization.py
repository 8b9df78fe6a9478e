"""A text tower's tokenizer as prompts use it: the model's own tokenization of whole texts, the
token pieces prompts are assembled from, the special tokens around them, the padding, the
context length, and the position whose feature is the text's (the tower's pooling).

OpenAI's CLIP and most open_clip models (LAION, DataComp, DFN, MetaCLIP, EVA02 ...) use CLIP's
BPE: `[SOT] text [EOT]` padded with 0, the feature taken at EOT (the highest id, open_clip's
"argmax" pooling). Other open_clip models bring a Hugging Face tokenizer (SigLIP's and SigLIP
2's SentencePiece vocabularies, BERT's, mT5's) with other special tokens and padding, and pool
elsewhere (SigLIP: the last position of the context). `BPETokenizer` and `HFTokenizer` give both
the same interface; `open_clip_backbone` picks the one of a model.
"""

import torch

from .clip_loading import clip

# open_clip's text pooling: the EOT (highest id), the first `eos_id`, the last position of the
# context, the first position.
POOLS = ("argmax", "eos", "last", "first")
# Texts whose tokenization by pieces is compared with the model's own tokenization when a
# Hugging Face tokenizer is adopted (the layout of its special tokens and padding is read from it).
PROBES = ("a photo of a dog.", "itap of the large {}, a type of flower")


class TokenizerError(ValueError):
    """A tokenizer whose layout prompts cannot be assembled in, or a text that does not fit it."""


class Tokenizer:
    """Common part: `encode` (pieces, without special tokens) and `token_text` are the kind's.

    Attributes: `name`; `context_length` (positions of the text tower); `pad_id`; `before` and
    `after` (the special tokens around a text's pieces); `pool` (one of `POOLS`) and `eos_id`;
    `is_clip_bpe` (CLIP's BPE vocabulary, the condition of the exact speed options together with
    a causal tower and EOT pooling, `towers.TextTower.prefix_exact`).
    """

    is_clip_bpe = False

    def __init__(self, name, context_length, pad_id, before, after, pool="argmax", eos_id=None):
        if pool not in POOLS:
            raise TokenizerError(f"text pooling {pool!r} is not one of open_clip's {POOLS}")
        if pool == "eos" and eos_id is None:
            raise TokenizerError("'eos' text pooling needs the id of the EOS token (eos_id)")
        self.name = name
        self.context_length = context_length
        self.pad_id = pad_id
        self.before, self.after = tuple(before), tuple(after)
        self.pool = pool
        self.eos_id = eos_id

    def encode(self, text):
        """Token ids of `text`'s pieces, the model's cleaning applied, without special tokens."""
        raise NotImplementedError

    def token_text(self, token_id):
        """(the vocabulary's token, its decoded text) of one id."""
        raise NotImplementedError

    def wrap(self, ids):
        """`ids` with the model's special tokens around them."""
        return [*self.before, *ids, *self.after]

    def check_length(self, row, text):
        if len(row) > self.context_length:
            raise TokenizerError(
                f"{text!r} has {len(row)} tokens with its special tokens, more than the text tower's "
                f"{self.context_length} positions"
            )

    def pad(self, rows, texts):
        """Rows of ids padded to the context length `[N, context_length]`."""
        ids = torch.full((len(rows), self.context_length), self.pad_id, dtype=torch.long)
        for i, (row, text) in enumerate(zip(rows, texts)):
            self.check_length(row, text)
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    def __call__(self, texts):
        """Token ids `[N, context_length]` of whole texts, as the model's own tokenizer gives them
        (a text too long for the context is refused, never cut)."""
        return self.pad([self.wrap(self.encode(t)) for t in texts], texts)

    def pool_positions(self, ids):
        """The pooled position of each row of ids `[N, L]` (L: the context length for "last");
        entries < 0 (context slots, see `prompts.PromptAssembler`) are never an EOT or EOS."""
        if self.pool == "argmax":
            return ids.argmax(dim=1)
        if self.pool == "eos":
            return (ids == self.eos_id).int().argmax(dim=1)
        index = ids.shape[1] - 1 if self.pool == "last" else 0
        return torch.full((ids.shape[0],), index, dtype=torch.long, device=ids.device)

    def __repr__(self):
        return f"{type(self).__name__}({self.name}, {self.context_length} positions, {self.pool} pooling)"


class BPETokenizer(Tokenizer):
    """CLIP's BPE (`simple`: openai-clip's or open_clip's `SimpleTokenizer`, default openai-clip's):
    `[SOT] pieces [EOT]`, padded with 0."""

    is_clip_bpe = True

    def __init__(self, simple=None, context_length=77, pool="argmax", eos_id=None, name="CLIP BPE"):
        self.simple = simple if simple is not None else clip.clip._tokenizer
        encoder = self.simple.encoder
        # openai-clip and open_clip name the special tokens differently; their ids are the same.
        sot = getattr(self.simple, "sot_token_id", None) or encoder["<|startoftext|>"]
        eot = getattr(self.simple, "eot_token_id", None) or encoder["<|endoftext|>"]
        super().__init__(name, context_length, 0, [sot], [eot], pool, eos_id)
        self.sot_id, self.eot_id = sot, eot

    def encode(self, text):
        return self.simple.encode(text)

    def token_text(self, token_id):
        """A token that is part of a multi-byte character shows its bytes."""
        token = self.simple.decoder[token_id]
        text = self.simple.decode([token_id]).strip()
        if "\ufffd" in text:
            raw = bytes(self.simple.byte_decoder[ch] for ch in token.removesuffix("</w>"))
            text = "<" + raw.hex(" ") + ">"
        return token, text


CLIP_BPE = BPETokenizer()


class HFTokenizer(Tokenizer):
    """open_clip's wrappers of a Hugging Face tokenizer (`HFTokenizer`, `SigLipTokenizer`: `own`).

    Whole texts are tokenized by `own` itself. The special tokens around the pieces are read from
    the Hugging Face tokenizer on a probe text; the pieces of `PROBES` wrapped and padded so must
    equal `own`'s tokenization of them, else the tokenizer is refused (its layout is not one that
    prompts can be assembled in, e.g. open_clip's "clips" mode with a class token after the padding).
    """

    def __init__(self, own, name, context_length, pool="argmax", eos_id=None):
        if getattr(own, "tokenizer_mode", ""):
            raise TokenizerError(
                f"the tokenizer {name} runs in open_clip's {own.tokenizer_mode!r} mode: not supported"
            )
        self.own = own
        self.hf = own.tokenizer
        self._clean = getattr(own, "clean_fn", None) or _siglip_clean
        self._strip_sep = getattr(own, "strip_sep_token", False)
        before, after = self._specials(PROBES[0])
        super().__init__(name, context_length, self.hf.pad_token_id, before, after, pool, eos_id)
        for probe in PROBES:
            ours, theirs = (
                self.pad([self.wrap(self.encode(probe))], [probe])[0],
                own([probe], context_length)[0],
            )
            if not torch.equal(ours, theirs):
                raise TokenizerError(
                    f"the tokenizer {name} lays out {probe!r} as {theirs.tolist()}, not as its pieces "
                    f"with special tokens around them and padding after them ({ours.tolist()}): prompts "
                    "cannot be assembled in its layout"
                )

    def _specials(self, probe):
        text = self._clean(probe)
        plain = self.hf(text, add_special_tokens=False).input_ids
        full = self.hf(text).input_ids
        start = next(
            (i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None
        )
        if not plain or start is None:
            raise TokenizerError(
                f"the tokenizer {self.hf.name_or_path} does not keep a text's pieces with its specials"
            )
        sep = self.hf.sep_token_id if self._strip_sep else None
        before, after = full[:start], full[start + len(plain) :]
        # open_clip's strip_sep_token writes 0 where the separator was.
        return [0 if t == sep else t for t in before], [0 if t == sep else t for t in after]

    def encode(self, text):
        return self.hf(self._clean(text), add_special_tokens=False).input_ids

    def __call__(self, texts):
        for text in texts:
            self.check_length(self.wrap(self.encode(text)), text)  # `own` would cut it silently
        return self.own(list(texts), self.context_length).long()

    def token_text(self, token_id):
        return self.hf.convert_ids_to_tokens(token_id), self.hf.decode([token_id]).strip()


def _siglip_clean(text):
    """open_clip's `SigLipTokenizer` cleaning (it has no `clean_fn`)."""
    from open_clip.tokenizer import basic_clean, canonicalize_text

    return canonicalize_text(basic_clean(text))
