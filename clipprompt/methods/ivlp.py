"""IVLP: independent vision-language prompting, the deep-prompt baseline of Khattak, Rasheed, Maaz,
Khan, Khan. "MaPLe: Multi-modal Prompt Learning". CVPR 2023 (Sec. 4), and of Khattak, Wasim,
Naseer, Khan, Yang, Khan. "Self-regulating Prompts: Foundational Model Adaptation without
Forgetting". ICCV 2023.

Learnable tokens in the first J layers of both towers, uncoupled, trained with cross-entropy:
- text: the prompt `[SOS] P_0 CLASS . [EOS]` with n learnable tokens `P_0` (layer 0, which get
  positional embeddings like words), and before each block j = 1 .. J-1 the same positions of
  the residual stream replaced with `P_j`. The released code initialises `P_0` from the first n
  BPE tokens of "a photo of a" and keeps the rest as text: with n = 2 the prompt is
  `[SOS] P_0 of a CLASS . [EOS]`. Deeper tokens: N(0, 0.02²).
- image (ViT): `V_0` (n_v tokens) appended after the patch and class tokens, replaced with `V_j`
  before block j = 1 .. J_v-1 (`clipprompt.towers.encode_image`); N(0, 0.02²).

The deep text tokens are the same for every class, so the text encoder's truncation, shared
prefix and chunking stay exact, and the class features do not depend on the image: evaluation
encodes them once (`CachedTextFeatures`). The image prompts change every image's features, so
the exported classifier (kind "prompted_image") keeps the class features and the image prompts.
MaPLe (`clipprompt.methods.maple`) and PromptSRC (`clipprompt.methods.promptsrc`) build on this
module.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..model import ContextSlots, FixedFeaturesCLIP, exported_kind
from ..prompts import PromptAssembler
from ..templates import PromptForm, TemplateError, bpe
from ..towers import DeepTextPrompts, encode_image, is_vit
from .coop import SoftPromptCLIP


def deep_prompt_form(n_ctx, ctx_init):
    """The text prompt of the released deep-prompt trainers: n learnable tokens initialised from
    the first n BPE tokens of `ctx_init`, whose other tokens stay as fixed text before the class
    name; random N(0, 0.02²) tokens and no fixed text when `ctx_init` is empty."""
    if n_ctx < 1:
        raise TemplateError(f"the text prompt needs at least 1 learnable token, not {n_ctx}")
    if not ctx_init:
        return PromptForm(n_ctx, 0, ".")
    ids = tuple(bpe(ctx_init))
    if n_ctx > len(ids):
        raise TemplateError(
            f"CTX_INIT {ctx_init!r} has {len(ids)} BPE tokens, fewer than the {n_ctx} learnable ones: "
            "use a longer CTX_INIT, fewer tokens, or CTX_INIT '' (random initialisation)"
        )
    return PromptForm(n_ctx, 0, ".", ids[:n_ctx], ids[n_ctx:])


def tower_depths(clip_model):
    """(text blocks, image blocks; 0 for a ResNet image tower) of a CLIP."""
    visual = clip_model.visual
    return len(clip_model.transformer.resblocks), len(visual.transformer.resblocks) if is_vit(visual) else 0


class DeepTextPrompt(nn.Module):
    """The text side of deep prompting over a list of classes: the layer-0 tokens `ctx` `[n, d]`
    in the prompt (`deep_prompt_form`) and `deep_text` `[J-1, n, d]`, which replace the prompt's
    token positions before blocks 1 .. J-1. `forward()` gives `TextEncoder`'s arguments."""

    def __init__(self, classnames, token_embedding, n_ctx, ctx_init, depth, truncate=True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"the text prompt depth must be at least 1 (layer 0), not {depth}")
        self.assembler = PromptAssembler(
            [deep_prompt_form(n_ctx, ctx_init)], classnames, token_embedding, truncate=truncate
        )
        self.ctx = nn.Parameter(self.assembler.init_table())
        width = token_embedding.weight.shape[1]
        deep = nn.Parameter(torch.randn(depth - 1, n_ctx, width) * 0.02) if depth > 1 else None
        self.register_parameter("deep_text", deep)
        self.register_buffer("positions", torch.arange(1, n_ctx + 1), persistent=False)

    @property
    def depth(self):
        return 1 + (0 if self.deep_text is None else self.deep_text.shape[0])

    def text_deep_tokens(self):
        """The tokens `[J-1, n, d]` of blocks 1 .. J-1, or None."""
        return self.deep_text

    def forward(self):
        """Prompt embeddings `[C, L, d]`, EOT positions, their `SharedPrefix` and the
        `DeepTextPrompts` (None for depth 1)."""
        tokens = self.text_deep_tokens()
        deep = None if tokens is None else DeepTextPrompts(tokens, self.positions)
        return (*self.assembler(self.ctx), deep)

    def image_prompts(self):
        """The image prompts `[J_v, n_v, w]` (None: the image tower runs unprompted)."""
        return

    def slots(self, classnames):
        form = self.assembler.forms[0]
        return [ContextSlots("layer-0 text context", None, None, 0, form)]


class IndependentPrompts(DeepTextPrompt):
    """IVLP's prompts: `DeepTextPrompt` and, uncoupled from it, image prompts `image`
    `[J_v, n_v, w]` (none for J_v = 0: language-only deep prompting)."""

    def __init__(self, classnames, clip_model, n_ctx, ctx_init, depth, n_image, image_depth, truncate=True):
        super().__init__(classnames, clip_model.token_embedding, n_ctx, ctx_init, depth, truncate)
        if image_depth and n_image < 1:
            raise ValueError(f"image prompts of depth {image_depth} need at least 1 token, not {n_image}")
        width = clip_model.visual.conv1.weight.shape[0]
        image = nn.Parameter(torch.randn(image_depth, n_image, width) * 0.02) if image_depth else None
        self.register_parameter("image", image)

    def image_prompts(self):
        return self.image


def prompted_image_features(visual, image, dtype, prompts):
    """Normalised fp32 features `[B, D]` of CLIP's image tower with per-layer `prompts` (or none)."""
    return F.normalize(encode_image(visual, image.to(dtype), prompts).features.float(), dim=-1)


@exported_kind
class PromptedImageCLIP(FixedFeaturesCLIP):
    """An exported deep-prompt classifier (kind "prompted_image"): fixed class features, and
    image prompts `[J, n, w]` applied by the image tower (none: CLIP's own image features)."""

    export_kind = "prompted_image"

    def __init__(self, clip_model, class_features, image_prompts=None, scale=None):
        super().__init__(clip_model, class_features, scale)
        self.register_buffer("image_prompts", image_prompts)

    def encode_image(self, image):
        return prompted_image_features(self.image_encoder, image, self.dtype, self.image_prompts)

    @classmethod
    def from_export(cls, clip_model, tensors, metadata, router):
        """The classifier of an exported file of kind "prompted_image"."""
        prompts = tensors.get("image_prompts")
        return cls(clip_model, tensors["text_features"].float(), prompts, tensors["logit_scale"])


class DeepPromptCLIP(SoftPromptCLIP):
    """Deep prompts in both towers (IVLP; MaPLe's and PromptSRC's base), cross-entropy. The
    prompt learner gives the text encoder's arguments (`forward`) and the image prompts
    (`image_prompts`)."""

    export_kind = PromptedImageCLIP.export_kind

    def encode_image(self, image):
        return prompted_image_features(
            self.image_encoder, image, self.dtype, self.prompt_learner.image_prompts()
        )

    def export_tensors(self):
        tensors = {"text_features": self.class_features()}
        prompts = self.prompt_learner.image_prompts()
        if prompts is not None:
            tensors["image_prompts"] = prompts
        return tensors

    def interpretation_note(self):
        return (
            "deep prompts: only the layer-0 text tokens are inputs of the token embedding's space; the "
            "deeper text tokens and the image prompts replace hidden states and are not words"
        )
