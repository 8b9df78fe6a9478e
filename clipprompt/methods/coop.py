"""CoOp: Zhou, Yang, Loy, Liu. "Learning to Prompt for Vision-Language Models". IJCV 2022.

The soft prompt `[SOS] v1 .. vM CLASS . [EOS]` with M learnable context vectors shared by all
classes (or one set per class with CSC), classified with CLIP's logits and trained with
cross-entropy through the frozen CLIP. It is the base of the family: KgCoOp and MoPD train the
same prompt with other losses, CoCoOp shifts it per image.
"""

import torch.nn.functional as F
from torch import nn

from ..caching import CachedTextFeatures
from ..model import ClassFeaturesCLIP, ContextSlots, PromptWork
from ..prompts import PromptAssembler
from ..templates import PromptForm


class ContextPrompt(nn.Module):
    """CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]` over a list of classes: M learnable context
    vectors shared by all classes (one set per class with `class_specific`), placed before the
    class name ("end"), around it ("middle") or after it ("front"), initialised from the words
    `ctx_init` or N(0, 0.02²), in the tokens of `tokenizer` (the model's; default CLIP's BPE).
    Also the student of KgCoOp and MoPD and the base of CoCoOp."""

    def __init__(
        self,
        classnames,
        token_embedding,
        n_ctx,
        ctx_init="",
        position="end",
        class_specific=False,
        truncate=True,
        tokenizer=None,
    ):
        super().__init__()
        form = PromptForm.coop(n_ctx, ctx_init, position, tokenizer)
        self.assembler = PromptAssembler(
            [form],
            classnames,
            token_embedding,
            class_specific=class_specific,
            truncate=truncate,
            tokenizer=tokenizer,
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self):
        """Prompt embeddings `[C, L, d]`, EOT positions `[C]` and their `SharedPrefix`."""
        return self.assembler(self.ctx)

    def slots(self, classnames):
        """The `ContextSlots` of the context table (one per class with class-specific context)."""
        form = self.assembler.forms[0]
        if not self.assembler.class_specific:
            return [ContextSlots("context", None, None, 0, form)]
        return [
            ContextSlots(f"context of class {name!r}", None, name, c * form.n_ctx, form)
            for c, name in enumerate(classnames)
        ]


class SoftPromptCLIP(CachedTextFeatures, ClassFeaturesCLIP):
    """A soft prompt whose class features do not depend on the image, classified with CLIP's
    logits and trained with cross-entropy (CoOp). Evaluation encodes the prompts once."""

    def __init__(self, clip_model, prompt_learner, text_encoder):
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder

    def compute_text_features(self):
        """Normalised fp32 class features `[C, D]` of the current prompts."""
        return F.normalize(self.text_encoder(*self.prompt_learner()).float(), dim=-1)

    def class_features(self):
        return self.text_features()

    def prompt_work(self, batch, training=True):
        assembler = self.prompt_learner.assembler
        return PromptWork(
            assembler, self.text_encoder, None, 1, lambda image_features: self.compute_text_features()
        )

    def context_slots(self, classnames):
        return self.prompt_learner.ctx, self.prompt_learner.slots(classnames)
