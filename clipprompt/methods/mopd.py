"""MoPD: Chen, Fu, Zhang. "MoPD: Mixture-of-Prompts Distillation for Vision-Language Models".
IEEE Transactions on Multimedia 2025 (arXiv 2412.19087).

The student is CoOp's soft prompt (4 context vectors from "a photo of a", class name at the
end). A pool of H hand-crafted templates serves as teachers: their text features are computed
once. A bias-free, zero-initialised gate scores the teachers from the image feature, keeps the
top T per image and softmaxes over them. The loss is `W CE(l_s, y) + (1 - W) L_mpd + W2 L_mps`:
the distillation term pulls the student towards the selected teachers, the selection term
moves the gate towards teachers that are right on the true label. Inference uses the student
prompt only; the gate's choice is reported (routing statistics, predictions).

Shapes: B images, C classes, H teachers, k = the number of teachers the gate keeps per image.
Teacher logits are constants (frozen text features of hand-crafted prompts), so the
distillation loss reaches the prompt through the student logits and the gate through the
teacher weights, and the selection loss reaches the gate only. All losses are computed in fp32
whatever the dtype of their inputs (autocast gives bf16/fp16 logits), so every precision mode
optimises the same objective.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..hard_prompts import POOLS
from ..model import Routing
from ..routing import Router, gather_selected, topk_softmax
from ..templates import check_template
from .coop import SoftPromptCLIP

COMBINES = ("weighted_kl", "mixture")


def teacher_logits(image_features, teacher_features, logit_scale):
    """Logits `[B, H, C]` of every teacher: `s * <v_b, T[h, c]>` (both sides normalised)."""
    return logit_scale * torch.einsum(
        "bd,hcd->bhc", image_features, teacher_features.to(image_features.dtype)
    )


def distillation_loss(student_logits, selected_logits, weights, temperature=1.0, combine="weighted_kl"):
    """`L_mpd`, batch mean, scaled by Tkd² so its gradient does not shrink with Tkd.

    weighted_kl: `sum_k w_k KL(softmax(l_k / Tkd) || softmax(l_s / Tkd))`;
    mixture: `KL(sum_k w_k softmax(l_k / Tkd) || softmax(l_s / Tkd))`. Both give the student
    the same gradient (the weights sum to 1); they reward the gate differently.
    """
    if combine not in COMBINES:
        raise ValueError(f"TRAINER.MOPD.TEACHER_COMBINE must be one of {COMBINES}, not {combine!r}")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, C]
    log_teachers = F.log_softmax(selected_logits.float() / temperature, dim=-1)  # [B, k, C]
    weights = weights.float()
    if combine == "weighted_kl":
        kl = (log_teachers.exp() * (log_teachers - log_student.unsqueeze(1))).sum(-1)  # [B, k]
        per_image = (weights * kl).sum(-1)
    else:
        # A weight that underflowed to 0 would make log's gradient 0 * inf = nan; clamping it
        # leaves every other weight exact.
        log_weights = weights.clamp_min(torch.finfo(torch.float32).tiny).log()
        log_mixture = torch.logsumexp(log_weights.unsqueeze(-1) + log_teachers, dim=1)  # [B, C]
        per_image = (log_mixture.exp() * (log_mixture - log_student)).sum(-1)
    return temperature**2 * per_image.mean()


def selection_loss(selected_logits, weights, label):
    """`L_mps = sum_k w_k CE(l_k, y)`, batch mean, on un-tempered teacher logits."""
    log_p = F.log_softmax(selected_logits.float(), dim=-1)  # [B, k, C]
    index = label.view(-1, 1, 1).expand(-1, log_p.shape[1], 1)
    nll = -log_p.gather(-1, index).squeeze(-1)  # [B, k]
    return (weights.float() * nll).sum(-1).mean()


def mopd_losses(
    student_logits,
    all_teacher_logits,
    gate_scores,
    label,
    num_teachers,
    w,
    w2,
    temperature=1.0,
    combine="weighted_kl",
):
    """The three weighted terms of `W CE + (1 - W) L_mpd + W2 L_mps`, and the gate's choice.

    Returns `({"loss_ce", "loss_mpd", "loss_mps"}, index [B, k], weights [B, k])`: the gate keeps
    the `num_teachers` highest scores per image and softmaxes over those only.
    """
    index, weights = topk_softmax(gate_scores.float(), num_teachers)
    selected = gather_selected(all_teacher_logits.float(), index)
    losses = {
        "loss_ce": w * F.cross_entropy(student_logits.float(), label),
        "loss_mpd": (1 - w) * distillation_loss(student_logits, selected, weights, temperature, combine),
        "loss_mps": w2 * selection_loss(selected, weights, label),
    }
    return losses, index, weights


def teacher_pool(pool, task_templates):
    """The teacher templates named by TRAINER.MOPD.POOL, validated, in pool order."""
    choices = ["task", *POOLS]
    names = [name.strip() for name in str(pool).split("+")]
    if not pool or not all(names):
        raise ValueError(
            f"TRAINER.MOPD.POOL {pool!r} names no teacher pool: use one of {choices} or several "
            "joined by '+', e.g. 'task+noisy'"
        )
    templates = []
    for name in names:
        if name not in choices:
            raise ValueError(
                f"TRAINER.MOPD.POOL {pool!r}: unknown pool {name!r}; choose from {choices} (joined by '+')"
            )
        if names.count(name) > 1:
            raise ValueError(f"TRAINER.MOPD.POOL {pool!r} names the pool {name!r} twice")
        if name == "task":
            if not task_templates:
                raise ValueError(
                    "TRAINER.MOPD.POOL uses 'task' but DATASET.PROMPTS.TEACHER_TEMPLATES is empty: "
                    "pass the dataset config (configs/datasets/<dataset>.yaml) or choose another pool"
                )
            where = "DATASET.PROMPTS.TEACHER_TEMPLATES"
            templates += [check_template(t, f"{where}[{i}]") for i, t in enumerate(task_templates)]
        else:
            templates += [check_template(t, f"POOLS[{name!r}][{i}]") for i, t in enumerate(POOLS[name])]
    return templates


@dataclass(frozen=True)
class DistillationOptions:
    """TRAINER.MOPD's loss settings, as the model uses them."""

    num_teachers: int  # T, teachers kept per image
    w: float  # weight of the student's cross-entropy; the distillation term gets 1 - w
    w2: float  # weight of the selection term
    temperature: float  # Tkd
    combine: str  # weighted_kl | mixture


class DistilledCLIP(SoftPromptCLIP):
    """CoOp's model (the student) plus frozen teacher features `[H, C, D]` and the gate."""

    routing_kind = "teacher"

    def __init__(
        self, clip_model, prompt_learner, text_encoder, teacher_templates, teacher_features, options
    ):
        super().__init__(clip_model, prompt_learner, text_encoder)
        num_teachers, _, dim = teacher_features.shape
        self.gate = Router(dim, num_teachers, bias=False, zero_init=True)
        # Rebuilt from the frozen CLIP and the config: never saved in checkpoints.
        self.register_buffer("teacher_features", teacher_features, persistent=False)
        self.options = options
        self.routing_names = tuple(teacher_templates)
        self.top_k = options.num_teachers

    def routing_module(self):
        return self.gate

    def losses(self, image, label):
        opts = self.options
        image_features = self.encode_image(image)
        student = self.similarity_logits(image_features, self.text_features())
        teachers = teacher_logits(image_features, self.teacher_features, self.logit_scale.exp())
        terms, index, weights = mopd_losses(
            student,
            teachers,
            self.gate(image_features),
            label,
            opts.num_teachers,
            opts.w,
            opts.w2,
            opts.temperature,
            opts.combine,
        )
        return terms, student, Routing(index, weights)
