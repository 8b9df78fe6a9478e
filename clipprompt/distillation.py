"""MoPD's losses: distillation from gate-selected hard-prompt teachers to a soft-prompt student.

Shapes: B images, C classes, H teachers, k = the number of teachers the gate keeps per image.
Teacher logits are constants (frozen text features of hand-crafted prompts), so the
distillation loss reaches the prompt through the student logits and the gate through the
teacher weights, and the selection loss reaches the gate only.
All losses are computed in fp32 whatever the dtype of their inputs (autocast gives bf16/fp16
logits), so every precision mode optimises the same objective.
"""

import torch
import torch.nn.functional as F

from .routing import gather_selected, topk_softmax

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
