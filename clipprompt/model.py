"""The interface every model of this repository speaks, and the frozen-CLIP parts they share.

A model is an `nn.Module` over a frozen CLIP. Training, evaluation and prediction call two
methods:

- `losses(image, label) -> (terms, logits, routing)`: the already weighted loss terms of one
  training batch (`{name: scalar}`; the trainer sums them, except the terms named in
  `gradient_guides`, which only shape the update through `shape_gradient`: ProGrad), the
  classification logits `[B, C]` of that batch, and its routing;
- `classify(image) -> (logits, routing)`: the logits evaluation and prediction use, by default
  `classify_features(encode_image(image))`.

`routing` is a `Routing` (the candidates a router or gate kept per image and their weights) for
models that route (MoCoOp's experts, MoPD's teachers), else None. Such models name their
candidates in `routing_names`, what they are in `routing_kind` and keep `top_k` per image.

Everything else the repository asks of a method is asked of its model, so that no tool names a
method: what its exported classifier holds (`export_kind`, `export_tensors`, `export_metadata`;
`clipprompt.exported` finds the kind's loader by name), which prompts a training step or an
evaluation encodes (`prompt_work`, for the benchmark), which learned vectors sit at which prompt
positions (`context_slots`, for `tools.interpret`), and state beyond its parameters that a
resumed run needs (`training_state`) and what it does when a training epoch ends (`end_epoch`).
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .prompts import PromptAssembler
from .routing import topk_softmax
from .templates import PromptForm
from .towers import clip_dtype, logit_bias, text_tower

# Kind name of an exported classifier -> the model class whose `from_export(clip_model, tensors,
# metadata, router)` loads it (`clipprompt.exported` chooses by the file's metadata) and whose
# `export_shapes(metadata, width)` says which tensors of which shapes such a file holds.
EXPORT_KINDS = {}


def exported_kind(cls):
    """Class decorator: register `cls.from_export` as the loader of exported files of kind
    `cls.export_kind`."""
    if cls.export_kind in EXPORT_KINDS:
        raise ValueError(f"two loaders for exported classifiers of kind {cls.export_kind!r}")
    EXPORT_KINDS[cls.export_kind] = cls
    return cls


class Routing(NamedTuple):
    index: torch.Tensor  # [B, k] the candidates kept for each image
    weight: torch.Tensor  # [B, k] their weights (each row sums to 1)


class PromptWork(NamedTuple):
    """The soft prompts one call encodes, as the benchmark counts and times them: the rows of
    `assembler` (all of them when None), once per prompt set (`sets`, CoCoOp: one per image),
    through `encoder`; `encode(image_features)` runs that encoding."""

    assembler: PromptAssembler
    encoder: nn.Module
    rows: torch.Tensor | None
    sets: int
    encode: Callable


class ContextSlots(NamedTuple):
    """One prompt of a learned context table, for `tools.interpret`: its rows `first ..
    first + form.n_ctx - 1` of the table, laid out as `form` says."""

    label: str  # "context", "expert 2", "context of class 'cat'"
    template: str | None  # the hand-crafted template it was initialised from, if any
    classname: str | None  # its class, for class-specific context
    first: int
    form: PromptForm


class PromptedCLIP(nn.Module):
    """The frozen image tower, logit scale and logit bias (SigLIP's; None for OpenAI's CLIP) of a
    CLIP (`clipprompt.towers`: OpenAI's or open_clip's); subclasses add prompts and losses."""

    # Candidates a router picks from (their templates), in index order; empty: no routing.
    routing_names = ()
    top_k = 0
    # What the candidates are, as outputs and files name them ("expert", "teacher").
    routing_kind = ""
    # Kind of the exported classifier (a name `clipprompt.exported` knows); "": not exportable.
    export_kind = ""
    # Names of loss terms that only shape the update (ProGrad's KL to zero-shot CLIP): the
    # trainer logs them but leaves them out of the loss it minimises, and hands the gradients
    # with respect to them to `shape_gradient`.
    gradient_guides = ()

    def __init__(self, clip_model, scale=None):
        """`scale`: the multiplier of the classification logits where it is not CLIP's logit
        scale (MoCoOp's CLS_TEMPERATURE, an exported classifier's recorded value)."""
        super().__init__()
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.logit_bias = logit_bias(clip_model)
        self.dtype = clip_dtype(clip_model)
        tower = text_tower(clip_model)
        # CLIP's token embedding (its vocabulary), held outside the module tree as the prompt
        # assemblers hold it: it belongs to the frozen CLIP, not to the model's state.
        self._token_embedding = [tower.token_embedding]
        self.tokenizer = tower.tokenizer  # the model's (`clipprompt.tokenization`)
        self.register_buffer(
            "fixed_scale", None if scale is None else torch.as_tensor(float(scale)), persistent=False
        )

    @property
    def token_embedding(self):
        """CLIP's token embedding: the vocabulary learned context vectors are compared with."""
        return self._token_embedding[0]

    # ------------------------------------------------------------------ classification

    def encode_image(self, image):
        """Normalised fp32 image features `[B, D]`."""
        return self.prepare_image_features(self.image_encoder(image.to(self.dtype)))

    def prepare_image_features(self, features):
        """The image features `classify_features` takes, from the image tower's output (or from
        features a user gives an exported classifier): normalised fp32 by default; a model that
        classifies unnormalised features (the linear probe) keeps their length."""
        return F.normalize(features.float(), dim=-1)

    def scale(self):
        """The multiplier s of the classification logits (CLIP's logit scale by default)."""
        return self.fixed_scale if self.fixed_scale is not None else self.logit_scale.exp().float()

    def similarity_logits(self, image_features, text_features):
        """The logits `s * <v, t> (+ b)` of normalised features `[B, D]` and `[C, D]`."""
        return self.add_bias(self.scale() * image_features @ text_features.t())

    def add_bias(self, logits):
        """`logits` plus the model's logit bias b, where it has one (SigLIP). b shifts every class
        of an image alike: predictions, softmax and every loss over the classes are unchanged."""
        return logits if self.logit_bias is None else logits + self.logit_bias.to(logits.dtype)

    def losses(self, image, label):
        """Cross-entropy of `classify`'s logits (CoOp, CoCoOp); models with more terms override it."""
        logits, routing = self.classify(image)
        return {"loss_ce": F.cross_entropy(logits.float(), label)}, logits, routing

    def classify(self, image):
        return self.classify_features(self.encode_image(image))

    def classify_features(self, image_features):
        """(logits, routing) of normalised image features `[B, D]`."""
        raise NotImplementedError(f"{type(self).__name__} does not define classify_features")

    def forward(self, image):
        return self.classify(image)[0]

    # ------------------------------------------------------------------ routing

    def routing_module(self):
        """The module scoring the candidates from image features (None: no routing); an
        exported classifier keeps its tensors."""
        return

    def route(self, image_features):
        """The top-k candidates and weights (`Routing`) of normalised image features, or None."""
        if not self.routing_names:
            return None
        return Routing(*topk_softmax(self.routing_module()(image_features).float(), self.top_k))

    def reference_routing(self, image_features, label):
        """A reference distribution over the candidates `[B, G]` that training pulls the router
        towards (MoCoOp's W_hard), or None."""

    # ------------------------------------------------------------------ what tools ask a method

    def templates(self):
        """The hand-crafted templates behind the classifier, as its exported file records them."""
        return list(self.routing_names)

    def export_tensors(self):
        """What the exported classifier needs besides the learned tensors, the router and the
        logit scale ({name: tensor}; computed once at export)."""
        return {}

    def export_metadata(self):
        """What the exported classifier's loader needs besides the common metadata."""
        return {}

    def prompt_work(self, batch, training=True):
        """The `PromptWork` of a training step (`training`) or an evaluation's text encoding for
        a batch of `batch` images; None when nothing is encoded."""
        return

    def context_slots(self, classnames):
        """(table `[S, d]`, [ContextSlots]) of the learned context vectors that sit at prompt
        positions (the rows of `classnames`' prompts with class-specific context), or None."""
        return

    def interpretation_note(self):
        """A note on what the learned context means beyond its words (or None)."""
        return

    def shape_gradient(self, grad, guides):
        """The update direction of one learnable tensor from `grad`, its gradient of the
        minimised loss, and `guides` ({term: gradient}), its gradients of the
        `gradient_guides` terms. Both may carry the same loss scale (fp16 gradient scaling): a
        transform must commute with a positive factor on all of them, and a non-finite guide
        must give a non-finite result, so that the scaler skips the step."""
        return grad

    def training_state(self):
        """State beyond the parameters that a resumed run needs ({name: tensor}); saved in every
        checkpoint and restored exactly on resume (e.g. a running average of the prompts)."""
        return {}

    def load_training_state(self, state):
        """Restore what `training_state` returned (same names and shapes, checked by the caller)."""

    def end_epoch(self, epoch, epochs):
        """Called after the last step of training epoch `epoch` (1-based) of `epochs`, before
        that epoch's validation and checkpoint (PromptSRC aggregates its prompts here)."""


class ClassFeaturesCLIP(PromptedCLIP):
    """Classification against one feature per class that does not depend on the image:
    `s * <v, t_c>`. Its exported classifier (kind "text_features") keeps those features."""

    export_kind = "text_features"

    def class_features(self):
        """Normalised fp32 class features `[C, D]`."""
        raise NotImplementedError(f"{type(self).__name__} does not define class_features")

    def classify_features(self, image_features):
        return self.similarity_logits(image_features, self.class_features()), self.route(image_features)

    def export_tensors(self):
        return {"text_features": self.class_features()}


@exported_kind
class FixedFeaturesCLIP(ClassFeaturesCLIP):
    """Class features given once (zero-shot CLIP's hand-crafted prompts, an exported classifier),
    with an optional router that reports which candidates it would pick (an exported MoPD)."""

    def __init__(self, clip_model, class_features, scale=None, router=None, routing_names=(), top_k=0):
        super().__init__(clip_model, scale)
        self.register_buffer("fixed_features", class_features)
        self.router = router
        self.routing_names, self.top_k = tuple(routing_names), top_k

    def routing_module(self):
        return self.router

    def class_features(self):
        return self.fixed_features

    @classmethod
    def export_shapes(cls, metadata, width):
        """{tensor: shape} an exported file of this kind holds, for its metadata and a CLIP of
        feature width `width` (None: any size); `clipprompt.exported` checks them on load."""
        return {"text_features": (len(metadata["classnames"]), width)}

    @classmethod
    def from_export(cls, clip_model, tensors, metadata, router):
        """The classifier of an exported file of kind "text_features"."""
        routing = metadata.get("routing") or {}
        return cls(
            clip_model,
            tensors["text_features"].float(),
            tensors["logit_scale"],
            router,
            routing.get("candidates", ()),
            routing.get("top_k", 0),
        )
