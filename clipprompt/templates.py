"""Hand-crafted prompt templates: validation, filling, and token spans around the class name.

Context lengths are counted in tokens of the model's tokenizer, never in words: in CLIP's BPE
"itap of a {}." has 4 tokens before the class name ("it", "ap", "of", "a"), "a close-up photo of
the {}." has 6. Counting words (as MoCoOp's release did) shifts the learnable span over the
class name or the EOS token. The tokenizer is CLIP's BPE unless one is given (another backbone's,
`clipprompt.tokenization`).
"""

import re
from dataclasses import dataclass

from .tokenization import CLIP_BPE

_TOKENIZER = CLIP_BPE.simple
SOT_ID = CLIP_BPE.sot_id
EOT_ID = CLIP_BPE.eot_id


class TemplateError(ValueError):
    """A template is malformed (e.g. has no `{}` placeholder)."""


def normalize_template(template):
    """Collapse runs of whitespace so that "a  photo" and "a photo" give the same prompt."""
    return re.sub(r"\s+", " ", template).strip()


def check_template(template, where="template"):
    """Raise unless `template` has exactly one `{}` placeholder; return it normalised."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise TemplateError(
            f"{where} {template!r} must contain exactly one '{{}}' where the class name goes, "
            "e.g. 'a photo of a {}.'"
        )
    return normalize_template(template)


def clean_classname(name):
    """CoOp-family convention: underscores in folder-derived class names become spaces."""
    return normalize_template(name.replace("_", " "))


def fill(template, classname):
    return check_template(template).format(clean_classname(classname))


def bpe(text):
    """BPE token ids of `text` without SOT/EOT (CLIP's cleaning and lower-casing applied)."""
    return _TOKENIZER.encode(text)


def _encoder(tokenizer):
    return (tokenizer or CLIP_BPE).encode


@dataclass(frozen=True)
class PromptForm:
    """Layout of one soft prompt: `[SOS] before fixed CLASS after suffix [EOS]`.

    `n_before`/`n_after` are the numbers of learnable context vectors on each side of the class
    name; `init_ids` are the token ids whose token embeddings initialise them, in order (None:
    random initialisation), in the vocabulary of the tokenizer the form was made with. `suffix`
    stays fixed (the final "." of a template), and so do the tokens `fixed_ids` (same vocabulary)
    between the context before the class name and the name (IVLP and MaPLe learn the first 2
    tokens of "a photo of a" and keep "of a" as text; ProGrad's initialisation leaves the tokens
    of its phrase beyond the phrase's word count there).
    """

    n_before: int
    n_after: int
    suffix: str = "."
    init_ids: tuple = None
    fixed_ids: tuple = ()

    @property
    def n_ctx(self):
        return self.n_before + self.n_after

    @classmethod
    def from_template(cls, template, tokenizer=None):
        """Context around `{}` from a hand-crafted template, counted in tokens (of `tokenizer`,
        default CLIP's BPE).

        "a photo of a {}, a type of flower." -> 4 before ("a photo of a"), 5 after
        (", a type of flower"), suffix ".". A template without a final "." keeps no suffix.
        """
        template = check_template(template)
        before, after = template.split("{}")
        suffix = ""
        if after.endswith("."):
            after, suffix = after[:-1], "."
        encode = _encoder(tokenizer)
        before_ids, after_ids = encode(before), encode(after)
        return cls(len(before_ids), len(after_ids), suffix, tuple(before_ids + after_ids))

    @classmethod
    def coop(cls, n_ctx, init="", position="end", tokenizer=None):
        """CoOp's M context vectors: all before CLASS ("end"), split around it ("middle"),
        or all after it ("front"); initialised from the words `init` (in `tokenizer`'s tokens,
        default CLIP's BPE) or randomly."""
        if n_ctx < 1:
            raise TemplateError(f"N_CTX must be at least 1 (learnable context vectors), not {n_ctx}")
        positions = {"end": n_ctx, "middle": n_ctx // 2, "front": 0}
        if position not in positions:
            raise ValueError(f"CLASS_TOKEN_POSITION must be end, middle or front, not {position!r}")
        init_ids = None
        if init:
            init_ids = tuple(_encoder(tokenizer)(init))
            if len(init_ids) != n_ctx:
                raise TemplateError(
                    f"CTX_INIT {init!r} has {len(init_ids)} tokens but N_CTX is {n_ctx}: "
                    "set N_CTX to the token count or change CTX_INIT"
                )
        return cls(positions[position], n_ctx - positions[position], ".", init_ids)

    def token_row(self, classname, tokenizer=None):
        """(token ids, is_context flags) of this form filled with `classname`, with the special
        tokens of `tokenizer` (default CLIP's BPE: SOT and EOT) around it.

        Context positions hold id 0 as a placeholder; their embeddings are replaced.
        """
        tokenizer = tokenizer or CLIP_BPE
        name_ids = list(self.fixed_ids) + tokenizer.encode(clean_classname(classname))
        suffix_ids = tokenizer.encode(self.suffix) if self.suffix else []
        ids = tokenizer.wrap([0] * self.n_before + name_ids + [0] * self.n_after + suffix_ids)
        before, after = len(tokenizer.before), len(tokenizer.after)
        is_ctx = [False] * before + [True] * self.n_before + [False] * len(name_ids)
        is_ctx += [True] * self.n_after + [False] * (len(suffix_ids) + after)
        return ids, is_ctx
