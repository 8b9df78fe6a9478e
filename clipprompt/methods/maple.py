"""MaPLe: Khattak, Rasheed, Maaz, Khan, Khan. "MaPLe: Multi-modal Prompt Learning". CVPR 2023.

Deep text prompts as in IVLP (`clipprompt.methods.ivlp`): n tokens `P_0` in the prompt
(initialised from "a photo" of "a photo of a", whose "of a" stays text: `[SOS] P_0 of a CLASS .
[EOS]` with n = 2) and `P_j` replacing them before text blocks j = 1 .. J-1. The image prompts are
not free parameters: they are produced from the text prompts by the V-L coupling functions,
`V_j = F_j(P_j)` for j = 0 .. J-1, each `F_j` its own Linear(text width -> image width) with bias,
and enter the image tower where IVLP's do (after the patch tokens, replaced before blocks 1 ..
J-1). Trained with cross-entropy.

Initialisation as released (muzairkhattak/multimodal-prompt-learning, trainers/maple.py): `F_0`
is a freshly initialised Linear, and the J-1 deeper couplings are copies of one initialised
Linear (equal at the start); deeper text tokens are N(0, 0.02²). The release keeps `F_0` in fp16
and hard-codes the widths 512 and 768 (ViT-B/16); here every coupling is fp32 and the widths
are the towers'.
"""

import copy

import torch
from torch import nn

from .ivlp import DeepTextPrompt


class CoupledPrompts(DeepTextPrompt):
    """MaPLe's prompts: `DeepTextPrompt` of depth J and the couplings `couplings[j]` that map
    its tokens of layer j to the image prompts of layer j."""

    def __init__(self, classnames, clip_model, n_ctx, ctx_init, depth, truncate=True):
        super().__init__(classnames, clip_model.token_embedding, n_ctx, ctx_init, depth, truncate)
        text_width = clip_model.token_embedding.weight.shape[1]
        image_width = clip_model.visual.conv1.weight.shape[0]
        first = nn.Linear(text_width, image_width)
        deeper = nn.Linear(text_width, image_width)
        self.couplings = nn.ModuleList([first] + [copy.deepcopy(deeper) for _ in range(depth - 1)])

    def image_prompts(self):
        """`[J, n, w_image]`: each layer's text tokens through its coupling."""
        tokens = [self.ctx] + ([] if self.deep_text is None else list(self.deep_text))
        return torch.stack([coupling(t) for coupling, t in zip(self.couplings, tokens)])
