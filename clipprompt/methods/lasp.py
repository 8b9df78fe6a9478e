"""LASP: Bulat, Tzimiropoulos. "LASP: Text-to-Text Optimization for Language-Aware Soft Prompting
of Vision & Language Models". CVPR 2023.

CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]`, trained with `L = CE(s <v, w_y>) + alpha * L_TT`:
the text-to-text loss classifies the feature `h[t, c]` of every hand-crafted template t filled
with class c among the learned prompts' features of all text classes,

    L_TT = mean_{t, c} -log softmax_{c'}(s <w_{c'}, h[t, c]>)[c]        (s = CLIP's logit scale),

so that the learned prompt of class c stays recognisable as class c to the hand-crafted
prompts. Options, each a config key of `trainers/lasp.py`: grouped prompts (G prompts, each
supervised by its own group of templates; the classifier is their normalised mean, as CLIP
ensembles prompts), virtual classes (class names without images in L_TT: LASP-V), a learnable
bias shared by all classes added to every learned text feature before it is normalised, the
LayerNorms of the image tower's residual blocks trained (re-calibration), and Gaussian noise on
the hand-crafted features of a step with some probability (the release).

Notation: v `[B, D]` normalised image features; w `[G, C', D]` normalised learned features of
the C' text classes (this run's C classes first, then virtual ones); h `[T, C', D]` normalised
hand-crafted features, computed once.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..caching import CachedTextFeatures
from ..model import ClassFeaturesCLIP, ContextSlots
from ..prompts import PromptAssembler
from ..text_encoder import encode_templates
from ..towers import text_tower
from .mocoop import GroupedSoftPrompts, resblock_norms, text_loss_lasp


def template_groups(sizes, num_templates):
    """Template index lists per group from their sizes (empty: one group of every template)."""
    sizes = [int(n) for n in sizes] or [num_templates]
    if num_templates < 1:
        raise ValueError("TRAINER.LASP.TEMPLATES is empty: L_TT needs hand-crafted templates")
    if any(n < 1 for n in sizes) or sum(sizes) != num_templates:
        raise ValueError(
            f"TRAINER.LASP.GROUPS {sizes} must be positive and sum to the number of "
            f"TRAINER.LASP.TEMPLATES ({num_templates}), or be [] for one group"
        )
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    return [list(range(start, start + n)) for start, n in zip(starts, sizes)]


def text_to_text_loss(soft, hard, groups, scale):
    """L_TT: every hand-crafted feature `hard[t, c]` classified among the learned features
    `soft[g, :]` of the group g that template t belongs to, with logits `scale * cos`; the mean
    of the negative log-probabilities of the right class over all templates and classes.

    MoCoOp's `text_loss_lasp` averages the probabilities of a group's templates before the log;
    given each template as a group of its own (here, with its group's prompt), it is the mean of
    the per-template log-probabilities, which is LASP's loss.
    """
    group_of = torch.empty(hard.shape[0], dtype=torch.long, device=soft.device)
    for g, idx in enumerate(groups):
        group_of[idx] = g
    singletons = [[t] for t in range(hard.shape[0])]
    return text_loss_lasp(soft[group_of], hard, singletons, 1.0 / scale)


@dataclass(frozen=True)
class LaspOptions:
    """TRAINER.LASP's model settings, as the model uses them (trainers/lasp.py documents each key)."""

    text_loss_weight: float
    text_bias: bool
    finetune_image_ln: bool
    noise_prob: float
    noise_std: float


class GroupPrompts(nn.Module):
    """G soft prompts of one form over the text classes, as one flat context table: rows
    `g * C' + c` are group g's prompt filled with text class c."""

    def __init__(self, form, num_groups, text_classnames, token_embedding, truncate):
        super().__init__()
        self.assembler = PromptAssembler(
            [form] * num_groups, text_classnames, token_embedding, truncate=truncate
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self, rows=None):
        return self.assembler(self.ctx, rows)


class LanguageAwareCLIP(GroupedSoftPrompts, CachedTextFeatures, ClassFeaturesCLIP):
    """LASP's model: G soft prompts over the text classes, the frozen hand-crafted features of
    every template for every text class, and optionally a text bias and trainable image-tower
    LayerNorms (`options`)."""

    def __init__(
        self,
        clip_model,
        text_encoder,
        form,
        templates,
        groups,
        num_classes,
        text_classnames,
        options,
        truncate=True,
    ):
        super().__init__(clip_model)
        self.options = options
        self.groups = groups
        self.num_classes = num_classes
        self.num_text_classes = len(text_classnames)
        self.text_encoder = text_encoder
        self.prompt_learner = GroupPrompts(
            form, len(groups), text_classnames, clip_model.token_embedding, truncate
        )
        embed_dim = text_tower(clip_model).embed_dim
        self.text_bias = nn.Parameter(torch.zeros(embed_dim)) if options.text_bias else None
        self.image_norms = (
            resblock_norms(self.image_encoder, "TRAINER.LASP.FINETUNE_IMAGE_LN")
            if options.finetune_image_ln
            else []
        )
        for p in self.image_norms:
            p.requires_grad_(True)
        hard = encode_templates(text_encoder, clip_model.token_embedding, templates, text_classnames)
        self.register_buffer("hard", hard, persistent=False)
        self.register_class_rows(num_classes)

    @staticmethod
    def ensemble(soft):
        """Class features `[C, D]` of the groups' features `[G, C, D]`: their normalised mean
        (one group: its features as they are)."""
        return soft[0] if soft.shape[0] == 1 else F.normalize(soft.mean(dim=0), dim=-1)

    def compute_text_features(self):
        return self.ensemble(self.soft_features(self.class_rows))

    def class_features(self):
        return self.text_features()

    def noisy(self, hard):
        """The hand-crafted features of one training step: with probability `noise_prob`,
        `hard + noise_std * N(0, 1)` (not renormalised), as the release draws it."""
        opts = self.options
        if opts.noise_prob > 0 and torch.rand(1).item() < opts.noise_prob:
            return hard + opts.noise_std * torch.randn_like(hard)
        return hard

    def losses(self, image, label):
        soft = self.soft_features()  # one encoder call: every group x every text class
        v = self.encode_image(image)
        logits = self.similarity_logits(v, self.ensemble(soft[:, : self.num_classes]))
        terms = {"loss_ce": F.cross_entropy(logits, label)}
        if self.options.text_loss_weight:
            text = text_to_text_loss(soft, self.noisy(self.hard), self.groups, self.scale())
            terms["loss_text"] = self.options.text_loss_weight * text
        return terms, logits, None

    def context_slots(self, classnames):
        form = self.prompt_learner.assembler.forms[0]
        if len(self.groups) == 1:
            return self.prompt_learner.ctx, [ContextSlots("context", None, None, 0, form)]
        slots = [
            ContextSlots(f"group {g + 1}", None, None, g * form.n_ctx, form) for g in range(len(self.groups))
        ]
        return self.prompt_learner.ctx, slots
