"""PromptSRC: Khattak, Wasim, Naseer, Khan, Yang, Khan. "Self-regulating Prompts: Foundational
Model Adaptation without Forgetting". ICCV 2023.

IVLP's deep prompts in both towers (`clipprompt.methods.ivlp`; the paper: 4 + 4 tokens, J = 9)
regularised towards the frozen CLIP, as the released code computes it (muzairkhattak/PromptSRC,
trainers/promptsrc.py). With normalised prompted features `f_p` (image) and `g_p` (text),
frozen ones `f~` (the same image tower with its prompts off: CLIP is frozen, so no second copy
is needed) and `g~_c = normalize(mean_t f_text(t(c)))` (the mean of the unnormalised frozen
features of many templates t: textual diversity), and logits `z = s <f, g>`:

    L = CE(z_p, y) + λ_text · mean|g_p - g~| + λ_image · mean|f_p - f~|
        + Σ_{b,c} p~ (log p~ - log p_p) / (B·C)

(the last term is KL(p~ ‖ p_p) summed and divided by B·C, not B, as released). The paper's
weights: λ_text 25, λ_image 10. The templates are the first 60 of CLIP's ImageNet templates with
"a photo of a {}." first (the release's list), or another pool.

Gaussian prompt aggregation (GPA): after the last step of epoch e (1 .. E) the learned tensors
θ_e are added to a running sum with weight w_e = N(e; μ, σ) / Σ_{e'=1..E} N(e'; μ, σ), and after
epoch E the model's tensors become that sum. The release sums deep copies of the whole state
dict (frozen CLIP included) and keeps the sum in memory only; here the sum covers the learned
tensors, in fp32, and is part of the model's training state, so checkpoints carry it and a
resumed run ends with the same tensors as an uninterrupted one.
"""

import math

import torch
import torch.nn.functional as F

from ..hard_prompts import IMAGENET_80, POOLS
from ..learnable import learnable_parameters
from ..templates import check_template, fill
from ..text_encoder import encode_texts
from .ivlp import DeepPromptCLIP, prompted_image_features

# The release's 60 templates: "a photo of a {}." and then CLIP's ImageNet templates in their
# published order without it, up to 60.
PROMPTSRC_60 = ("a photo of a {}.", *[t for t in IMAGENET_80 if t != "a photo of a {}."][:59])
# TRAINER.PROMPTSRC.TEMPLATES: the names of the template lists ("task": the dataset's
# DATASET.PROMPTS.TEACHER_TEMPLATES, given to `frozen_templates`).
TEMPLATE_CHOICES = ("promptsrc60", "task", *POOLS)


def frozen_templates(choice, task_templates):
    """The templates of the frozen text features for the choice TRAINER.PROMPTSRC.TEMPLATES."""
    if choice not in TEMPLATE_CHOICES:
        raise ValueError(f"TRAINER.PROMPTSRC.TEMPLATES must be one of {TEMPLATE_CHOICES}, not {choice!r}")
    if choice == "promptsrc60":
        return list(PROMPTSRC_60)
    if choice != "task":
        return list(POOLS[choice])
    if not task_templates:
        raise ValueError(
            "TRAINER.PROMPTSRC.TEMPLATES 'task' needs DATASET.PROMPTS.TEACHER_TEMPLATES, which is empty "
            "for this dataset: choose another template list"
        )
    return [
        check_template(t, f"DATASET.PROMPTS.TEACHER_TEMPLATES[{i}]") for i, t in enumerate(task_templates)
    ]


def gaussian_weights(mean, std, epochs):
    """GPA's weights w_1 .. w_E of the epochs: a Gaussian density over 1 .. E, normalised."""
    if not std > 0:
        raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD must be positive, not {std}")
    density = [
        (1 / (std * math.sqrt(2 * math.pi))) * math.exp(-0.5 * ((e - mean) / std) ** 2)
        for e in range(1, epochs + 1)
    ]
    total = sum(density)
    if not total > 0:
        raise ValueError(
            f"TRAINER.PROMPTSRC.GPA_MEAN {mean} and GPA_STD {std} give every epoch 1..{epochs} zero weight: "
            "choose a mean within the epochs or a wider std"
        )
    return [d / total for d in density]


def self_consistency_terms(
    logits, frozen_logits, text, frozen_text, image, frozen_image, text_weight, image_weight
):
    """PromptSRC's three regularisers of one batch (module docstring), from normalised fp32
    features and logits `[B, C]`."""
    kl = F.kl_div(
        F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1), reduction="sum", log_target=True
    )
    return {
        "loss_scl_text": text_weight * F.l1_loss(text, frozen_text),
        "loss_scl_image": image_weight * F.l1_loss(image, frozen_image),
        "loss_scl_logits": kl / logits.numel(),
    }


class SelfRegulatingCLIP(DeepPromptCLIP):
    """IVLP's model trained with PromptSRC's losses and aggregated with GPA (module docstring).

    `templates`: the templates of the frozen text features, computed for `classnames` on the
    first training step (an evaluation never needs them); `gpa`: (μ, σ).
    """

    def __init__(self, clip_model, prompt_learner, text_encoder, templates, classnames, weights, gpa):
        super().__init__(clip_model, prompt_learner, text_encoder)
        self.template_list = list(templates)
        self.classnames = list(classnames)
        self.text_weight, self.image_weight = weights
        self.gpa = gpa
        self.register_buffer("frozen_text", None, persistent=False)
        self._gpa_sum = {
            name: torch.zeros_like(p, dtype=torch.float32) for name, p in learnable_parameters(self).items()
        }

    def templates(self):
        return list(self.template_list)

    def frozen_text_features(self):
        """`g~` `[C, D]`: normalised mean of the frozen unnormalised features over the templates,
        computed once, in the weights' precision (never under autocast)."""
        if self.frozen_text is None:
            texts = [fill(t, c) for t in self.template_list for c in self.classnames]
            groups = [t for t in range(len(self.template_list)) for _ in self.classnames]
            device = self.token_embedding.weight.device
            with torch.autocast(device.type, enabled=False):
                feats = encode_texts(
                    self.text_encoder, self.token_embedding, texts, normalize=False, groups=groups
                )
            per_template = feats.view(len(self.template_list), len(self.classnames), -1)
            self.frozen_text = F.normalize(per_template.mean(dim=0), dim=-1)
        return self.frozen_text

    def losses(self, image, label):
        text = self.compute_text_features()
        features = self.encode_image(image)
        logits = self.similarity_logits(features, text)
        with torch.no_grad():
            frozen_image = prompted_image_features(self.image_encoder, image, self.dtype, None)
            frozen_text = self.frozen_text_features()
            frozen_logits = self.similarity_logits(frozen_image, frozen_text)
        terms = {"loss_ce": F.cross_entropy(logits, label)}
        terms |= self_consistency_terms(
            logits,
            frozen_logits,
            text,
            frozen_text,
            features,
            frozen_image,
            self.text_weight,
            self.image_weight,
        )
        return terms, logits, None

    # ------------------------------------------------------------------ GPA

    def training_state(self):
        return {f"gpa_sum.{name}": value for name, value in self._gpa_sum.items()}

    def load_training_state(self, state):
        for name in self._gpa_sum:
            self._gpa_sum[name] = state[f"gpa_sum.{name}"].to(self._gpa_sum[name].device)

    @torch.no_grad()
    def end_epoch(self, epoch, epochs):
        weight = gaussian_weights(*self.gpa, epochs)[epoch - 1]
        params = learnable_parameters(self)
        for name, total in self._gpa_sum.items():
            # w·θ rounded first, then added: the release's order of operations.
            self._gpa_sum[name] = total.to(params[name].device) + weight * params[name].float()
        if epoch == epochs:
            mean, std = self.gpa
            print(f"GPA (mean {mean}, std {std}): the aggregated prompts replace the last epoch's")
            for name, total in self._gpa_sum.items():
                params[name].copy_(total)
