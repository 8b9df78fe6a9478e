"""The interface every model of this repository speaks, and the frozen-CLIP parts they share.

A model is an `nn.Module` over a frozen CLIP with two methods, and nothing else is called by
training, evaluation, prediction, export or the benchmark:

- `losses(image, label) -> (terms, logits, routing)`: the already weighted loss terms of one
  training batch (`{name: scalar}`; the trainer sums them), the classification logits `[B, C]`
  of that batch, and its routing;
- `classify(image) -> (logits, routing)`: the logits evaluation and prediction use.

`routing` is a `Routing` (the candidates a router or gate kept per image and their weights) for
models that route (MoCoOp's experts, MoPD's teachers), else None. Such models name their
candidates in `routing_names` and keep `top_k` of them per image.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .caching import CachedTextFeatures
from .prompts import PromptAssembler
from .templates import PromptForm


class Routing(NamedTuple):
    index: torch.Tensor  # [B, k] the candidates kept for each image
    weight: torch.Tensor  # [B, k] their weights (each row sums to 1)


class PromptedCLIP(nn.Module):
    """The frozen image tower and logit scale of a CLIP; subclasses add prompts and losses."""

    # Candidates a router picks from (their templates), in index order; empty: no routing.
    routing_names = ()
    top_k = 0

    def __init__(self, clip_model):
        super().__init__()
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def encode_image(self, image):
        """Normalised fp32 image features `[B, D]`."""
        return F.normalize(self.image_encoder(image.to(self.dtype)).float(), dim=-1)

    def similarity_logits(self, image_features, text_features):
        """CLIP's logits `s * <v, t>` of normalised features `[B, D]` and `[C, D]`."""
        return self.logit_scale.exp() * image_features @ text_features.t()

    def losses(self, image, label):
        """Cross-entropy of `classify`'s logits (CoOp, CoCoOp); models with more terms override it."""
        logits, routing = self.classify(image)
        return {"loss_ce": F.cross_entropy(logits.float(), label)}, logits, routing

    def classify(self, image):
        raise NotImplementedError(f"{type(self).__name__} does not define classify")

    def forward(self, image):
        return self.classify(image)[0]


class ContextPrompt(nn.Module):
    """CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]` over a list of classes: M learnable context
    vectors shared by all classes (one set per class with `class_specific`), placed before the
    class name ("end"), around it ("middle") or after it ("front"), initialised from the words
    `ctx_init` or N(0, 0.02²). Also the student of KgCoOp and MoPD and the base of CoCoOp."""

    def __init__(
        self,
        classnames,
        token_embedding,
        n_ctx,
        ctx_init="",
        position="end",
        class_specific=False,
        truncate=True,
    ):
        super().__init__()
        form = PromptForm.coop(n_ctx, ctx_init, position)
        self.assembler = PromptAssembler(
            [form], classnames, token_embedding, class_specific=class_specific, truncate=truncate
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self):
        """Prompt embeddings `[C, L, d]`, EOT positions `[C]` and their `SharedPrefix`."""
        return self.assembler(self.ctx)


class SoftPromptCLIP(CachedTextFeatures, PromptedCLIP):
    """A soft prompt whose class features do not depend on the image, classified with CLIP's
    logits and trained with cross-entropy (CoOp). Evaluation encodes the prompts once."""

    def __init__(self, clip_model, prompt_learner, text_encoder):
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder

    def compute_text_features(self):
        """Normalised fp32 class features `[C, D]` of the current prompts."""
        return F.normalize(self.text_encoder(*self.prompt_learner()).float(), dim=-1)

    def classify(self, image):
        return self.similarity_logits(self.encode_image(image), self.text_features()), None
