"""MoCoOp's mixture of soft prompts: expert mixing, router loss and grouped text loss.

Du, Niu, Zhao. "Mixture of Prompt Learning for Vision Language Models". arXiv 2409.12011,
Frontiers in AI 2025. Equation numbers refer to the arXiv paper. Notation (shapes):
  v  [B, D]      normalised image features        s     logit scale (exp of CLIP's)
  S  [G, C, D]   normalised soft features of expert g for text class c
  h  [T, C, D]   normalised hard features of template t (templates of all groups, in order)
  P  [G, C, D]   normalised group prototypes      hbar  [G, D] group features (Eq. 5)
`groups` lists, per expert, the indices of its templates in h.
"""

import torch
import torch.nn.functional as F

from .routing import gather_selected


def validate_groups(group_sizes, templates):
    """Template index lists per group, checking the config's GROUPS against TEMPLATES."""
    sizes = [int(n) for n in group_sizes]
    if not sizes or not templates:
        raise ValueError(
            "DATASET.PROMPTS.EXPERT_GROUPS / EXPERT_TEMPLATES are empty: the dataset config must "
            "list MoCoOp's template groups (see configs/datasets/)"
        )
    if any(n < 1 for n in sizes) or sum(sizes) != len(templates):
        raise ValueError(
            f"DATASET.PROMPTS.EXPERT_GROUPS {sizes} must be positive and sum to the number of "
            f"EXPERT_TEMPLATES ({len(templates)})"
        )
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    return [list(range(start, start + n)) for start, n in zip(starts, sizes)]


def group_features(hard, groups):
    """(P [G, C, D], hbar [G, D]): normalised per-class prototypes and Eq. 5's group features."""
    means = torch.stack([hard[idx].mean(dim=0) for idx in groups])  # [G, C, D]
    return F.normalize(means, dim=-1), means.mean(dim=1)


def mix_expert_logits(v, soft, index, weight, scale):
    """Eq. 2-3: logits of the weighted top-k experts, mixed in logit space.

    sum_j w_j * s * <v, S[top_j, c]> equals s * <v, sum_j w_j S[top_j, c]> (the text-feature
    mixture, not renormalised, as released) and costs B*G*C*D instead of B*K*C*D memory.
    """
    per_expert = scale * torch.einsum("bd,gcd->bgc", v, soft)
    return (weight[..., None] * gather_selected(per_expert, index)).sum(dim=1)


def router_target(v, label, prototypes, group_mean, mode="mean", top2_boost=0.0, temperature=1.0):
    """Eq. 6: W_hard = softmax(sim / tau_r), detached.

    mode "mean": sim[g] = cos(v, hbar[g]) (the paper); "class": sim[g] = cos(v, P[g, y]) (the
    authors' later release). `top2_boost` is added to the two largest similarities (10 in the
    release, 0 in the paper).
    """
    if mode == "mean":
        sim = v @ F.normalize(group_mean, dim=-1).t()
    elif mode == "class":
        sim = torch.einsum("bd,bgd->bg", v, prototypes[:, label].transpose(0, 1))
    else:
        raise ValueError(f"TRAINER.MOCOOP.ROUTER_TARGET must be 'mean' or 'class', not {mode!r}")
    if top2_boost:
        top2 = sim.topk(min(2, sim.shape[1]), dim=1).indices
        sim = sim.scatter_add(1, top2, torch.full_like(top2, top2_boost, dtype=sim.dtype))
    return (sim / temperature).softmax(dim=1).detach()


def router_loss(router_logits, target, direction="router_to_hard"):
    """Eq. 7, batch mean. router_to_hard: KL(W_router || W_hard) (the paper);
    hard_to_router: KL(W_hard || W_router) (the release's CE(z, W_hard) minus its constant entropy)."""
    log_router = router_logits.log_softmax(dim=1)
    log_target = target.clamp_min(1e-12).log()
    if direction == "router_to_hard":
        kl = (log_router.exp() * (log_router - log_target)).sum(dim=1)
    elif direction == "hard_to_router":
        kl = (target * (log_target - log_router)).sum(dim=1)
    else:
        raise ValueError(
            f"TRAINER.MOCOOP.ROUTER_KL must be 'router_to_hard' or 'hard_to_router', not {direction!r}"
        )
    return kl.mean()


def text_loss_lasp(soft, hard, groups, temperature):
    """Eq. 8-9 in LASP's form: hard feature h[i, c] of template i in group g is classified
    among the soft features S[g, :] of all text classes; P(c) averages P_i(c) over i in I_g;
    the loss is -log P(c) averaged over classes and experts."""
    losses = []
    for g, idx in enumerate(groups):
        logits = torch.einsum("icd,ed->ice", hard[idx], soft[g]) / temperature  # [n_g, C, C]
        p_true = logits.softmax(dim=-1).diagonal(dim1=1, dim2=2)  # P_i(c)  [n_g, C]
        losses.append(-p_true.mean(dim=0).log().mean())
    return torch.stack(losses).mean()


def text_loss_prototype(soft, prototypes, temperature):
    """The release's form: soft feature S[g, c] is classified among the group prototypes
    P[g, :] of all classes with cross-entropy, averaged over experts and classes."""
    logits = torch.einsum("gcd,ged->gce", soft, prototypes) / temperature
    target = torch.arange(soft.shape[1], device=soft.device).repeat(soft.shape[0])
    return F.cross_entropy(logits.flatten(0, 1), target)
