"""MoCoOp: Du, Niu, Zhao. "Mixture of Prompt Learning for Vision Language Models".
arXiv 2409.12011; Frontiers in Artificial Intelligence 2025. Equation numbers refer to the
arXiv paper; docs/MOCOOP.md gives the equations, the presets and the release's differences.

G soft prompts (experts), each initialised from the first hand-crafted template of a group; a
router on the image feature picks the top-K experts per image and mixes their class features.
Training adds hard-prompt-guided routing (L_router) and grouped text supervision (L_text):
L = L_cls + lambda1 * L_router + lambda2 * L_text.

Notation (shapes):
  v  [B, D]      normalised image features        s     logit scale (exp of CLIP's)
  S  [G, C, D]   normalised soft features of expert g for text class c
  h  [T, C, D]   normalised hard features of template t (templates of all groups, in order)
  P  [G, C, D]   normalised group prototypes      hbar  [G, D] group features (Eq. 5)
`groups` lists, per expert, the indices of its templates in h.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..caching import CachedTextFeatures
from ..model import ContextSlots, PromptedCLIP, PromptWork, Routing, exported_kind
from ..prompts import PromptAssembler
from ..routing import Router, gather_selected, topk_softmax
from ..templates import PromptForm
from ..text_encoder import encode_templates
from ..towers import text_tower


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


# Values of the choices of `MixtureOptions` (TRAINER.MOCOOP's keys of the same names).
CHOICES = {
    "router_target": ("mean", "class"),
    "router_kl": ("router_to_hard", "hard_to_router"),
    "text_loss_form": ("lasp", "prototype"),
}


@dataclass(frozen=True)
class MixtureOptions:
    """TRAINER.MOCOOP's model settings, as the model uses them (trainers/mocoop.py documents
    each key)."""

    top_k: int
    router_loss_weight: float
    text_loss_weight: float
    router_target: str
    router_target_top2_boost: float
    router_temperature: float
    router_kl: str
    text_loss_form: str
    text_temperature: float
    cls_temperature: float
    text_bias: bool
    finetune_image_ln: bool


def text_classnames(classnames, all_classnames, virtual=True):
    """The text classes of a run: its own classes first (labels index them directly), then, with
    virtual classes, the dataset's other class names in label order (LASP-V)."""
    names = list(classnames)
    if virtual:
        own = set(names)
        names += [c for c in all_classnames if c not in own]
    return names


def resblock_norms(image_encoder, key="TRAINER.MOCOOP.FINETUNE_IMAGE_LN"):
    """Weights and biases of the LayerNorms inside the image transformer's residual blocks
    (ln_1, ln_2), which the release trains; ln_pre and ln_post stay frozen, as there. `key`: the
    config key that asked for them, for the error."""
    blocks = getattr(getattr(image_encoder, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ValueError(
            f"{key} needs a ViT image tower (residual blocks with ln_1/ln_2); this image tower is "
            f"{type(image_encoder).__name__}: set it to False"
        )
    # fp32 in every PREC mode: OpenAI's fp16 layout keeps LayerNorms in fp32.
    return [p for block in blocks for norm in (block.ln_1, block.ln_2) for p in norm.parameters()]


class ExpertPrompts(nn.Module):
    """G soft prompts over the text classes, as one flat context table."""

    def __init__(self, templates, text_classnames, clip_model, truncate):
        super().__init__()
        tower = text_tower(clip_model)
        forms = [PromptForm.from_template(t, tower.tokenizer) for t in templates]
        self.assembler = PromptAssembler(
            forms, text_classnames, tower.token_embedding, truncate=truncate, tokenizer=tower.tokenizer
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self, rows=None):
        return self.assembler(self.ctx, rows)


@exported_kind
class ExpertMixtureCLIP(PromptedCLIP):
    """Classification by a mixture of experts (Eq. 2-3): per image, the router's top-K experts'
    logits mixed with its weights. Subclasses give the experts' class features; an exported
    classifier (kind "experts") keeps them, with the router."""

    routing_kind = "expert"
    export_kind = "experts"

    def routing_module(self):
        return self.router

    def expert_features(self):
        """Normalised expert features of the classification classes `[G, C, D]`."""
        raise NotImplementedError(f"{type(self).__name__} does not define expert_features")

    def classify_features(self, image_features):
        routing = self.route(image_features)
        logits = mix_expert_logits(image_features, self.expert_features(), *routing, self.scale())
        return self.add_bias(logits), routing

    def export_tensors(self):
        return {"expert_features": self.expert_features()}

    @classmethod
    def export_shapes(cls, metadata, width):
        experts = len((metadata.get("routing") or {}).get("candidates", ()))
        return {"expert_features": (experts, len(metadata["classnames"]), width)}

    @classmethod
    def from_export(cls, clip_model, tensors, metadata, router):
        """The classifier of an exported file of kind "experts"."""
        return ExportedExperts(clip_model, tensors, metadata, router)


class ExportedExperts(ExpertMixtureCLIP):
    """Expert features fixed at export."""

    def __init__(self, clip_model, tensors, metadata, router):
        super().__init__(clip_model, tensors["logit_scale"])
        self.register_buffer("fixed_features", tensors["expert_features"].float())
        self.router = router
        self.routing_names = tuple(metadata["routing"]["candidates"])
        self.top_k = metadata["routing"]["top_k"]

    def expert_features(self):
        return self.fixed_features


class GroupedSoftPrompts:
    """What MoCoOp's experts and LASP's template groups share: one soft prompt per group of
    `groups`, each over every text class (the run's classes first), encoded by `text_encoder` from
    `prompt_learner(rows)` and shifted by `text_bias` (or None); `num_text_classes` per group."""

    def register_class_rows(self, num_classes):
        """`class_rows`: the rows of the classification classes (the first `num_classes` text
        classes) of every group."""
        rows = torch.arange(len(self.groups))[:, None] * self.num_text_classes + torch.arange(num_classes)
        self.register_buffer("class_rows", rows.flatten(), persistent=False)

    def soft_features(self, rows=None):
        """Normalised soft features `[G, C', D]` of the given prompt rows (all text classes by default)."""
        feats = self.text_encoder(*self.prompt_learner(rows)).float()
        if self.text_bias is not None:
            feats = feats + self.text_bias
        return F.normalize(feats, dim=-1).view(len(self.groups), -1, feats.shape[-1])

    def prompt_work(self, batch, training=True):
        # A training step encodes every group for every text class; an evaluation the
        # classification classes of every group (once per evaluation, cached).
        rows = None if training else self.class_rows
        return PromptWork(
            self.prompt_learner.assembler, self.text_encoder, rows, 1, lambda v: self.soft_features(rows)
        )


class MixtureCLIP(GroupedSoftPrompts, CachedTextFeatures, ExpertMixtureCLIP):
    """G experts over the text classes (this run's classes first, then virtual ones), a router,
    and the frozen hard features of every template of every group."""

    def __init__(
        self,
        clip_model,
        text_encoder,
        groups,
        templates,
        num_classes,
        text_classnames,
        options,
        truncate=True,
    ):
        tau = options.cls_temperature
        super().__init__(clip_model, 1.0 / tau if tau > 0 else None)
        self.options = options
        self.num_experts = len(groups)
        self.num_classes = num_classes
        self.num_text_classes = len(text_classnames)
        self.groups = groups
        self.text_encoder = text_encoder
        first_templates = [templates[idx[0]] for idx in groups]
        self.routing_names = tuple(first_templates)
        self.top_k = options.top_k
        self.prompt_learner = ExpertPrompts(first_templates, text_classnames, clip_model, truncate)
        embed_dim = text_tower(clip_model).embed_dim
        self.router = Router(embed_dim, self.num_experts)
        self.text_bias = nn.Parameter(torch.zeros(embed_dim)) if options.text_bias else None
        self.image_norms = resblock_norms(self.image_encoder) if options.finetune_image_ln else []
        for p in self.image_norms:
            p.requires_grad_(True)

        # Hard features: every template of every group for every text class, once, frozen.
        hard = encode_templates(text_encoder, text_encoder.token_embedding, templates, text_classnames)
        prototypes, group_mean = group_features(hard, groups)
        self.register_buffer("hard", hard, persistent=False)
        self.register_buffer("prototypes", prototypes, persistent=False)
        self.register_buffer("group_mean", group_mean, persistent=False)
        self.register_class_rows(num_classes)

    def router_scores(self, v):
        """Router scores `[B, G]` of normalised image features, in fp32 (routing and its losses
        stay fp32 under autocast too)."""
        return self.router(v).float()

    def reference_routing(self, image_features, label):
        return self.router_target(image_features, label)

    def router_target(self, v, label):
        """W_hard `[B, G]` (Eq. 6), the router loss's detached reference distribution."""
        opts = self.options
        return router_target(
            v,
            label,
            self.prototypes,
            self.group_mean,
            opts.router_target,
            opts.router_target_top2_boost,
            opts.router_temperature,
        )

    def compute_text_features(self):
        """Soft features of the classification classes for every expert (cached at evaluation)."""
        return self.soft_features(self.class_rows)

    def expert_features(self):
        return self.text_features()

    def losses(self, image, label):
        opts = self.options
        v = self.encode_image(image)
        scores = self.router_scores(v)
        routing = Routing(*topk_softmax(scores, opts.top_k))
        soft = self.soft_features()  # one encoder call: all experts x all text classes
        logits = self.add_bias(mix_expert_logits(v, soft[:, : self.num_classes], *routing, self.scale()))
        terms = {"loss_cls": F.cross_entropy(logits, label)}
        if opts.router_loss_weight:
            loss = router_loss(scores, self.router_target(v, label), opts.router_kl)
            terms["loss_router"] = opts.router_loss_weight * loss
        if opts.text_loss_weight:
            if opts.text_loss_form == "lasp":
                text = text_loss_lasp(soft, self.hard, self.groups, opts.text_temperature)
            else:
                text = text_loss_prototype(soft, self.prototypes, opts.text_temperature)
            terms["loss_text"] = opts.text_loss_weight * text
        return terms, logits, routing

    def context_slots(self, classnames):
        assembler, first, slots = self.prompt_learner.assembler, 0, []
        for g, form in enumerate(assembler.forms):
            slots.append(ContextSlots(f"expert {g + 1}", self.routing_names[g], None, first, form))
            first += form.n_ctx
        return self.prompt_learner.ctx, slots
