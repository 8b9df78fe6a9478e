"""MoCoOp: Du, Niu, Zhao. "Mixture of Prompt Learning for Vision Language Models".
arXiv 2409.12011; Frontiers in Artificial Intelligence 2025.

G soft prompts (experts), each initialised from the first hand-crafted template of a group;
a router on the image feature picks the top-K experts per image and mixes their class
features. Training adds hard-prompt-guided routing (L_router) and grouped text supervision
(L_text): L = L_cls + lambda1 * L_router + lambda2 * L_text. Both the paper's equations and
the authors' release are available as config presets (README, "MoCoOp presets").
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from clipprompt import mixture
from clipprompt.caching import CachedTextFeatures
from clipprompt.model import PromptedCLIP, Routing
from clipprompt.prompts import PromptAssembler
from clipprompt.routing import Router, topk_softmax
from clipprompt.templates import PromptForm, check_template
from clipprompt.text_encoder import encode_templates

from .config import model_prompts
from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.MOCOOP = CN()
    # Experts selected per image (K).
    cfg.TRAINER.MOCOOP.TOPK = 2
    # Experts: "dataset" = one per group of DATASET.PROMPTS.EXPERT_GROUPS; "single" = one
    # expert supervised by all templates (LASP-style single prompt; use with TOPK 1).
    cfg.TRAINER.MOCOOP.GROUPING = "dataset"
    # lambda1 and lambda2 of L = L_cls + lambda1 * L_router + lambda2 * L_text (0 skips a term).
    cfg.TRAINER.MOCOOP.ROUTER_LOSS_WEIGHT = 1.0
    cfg.TRAINER.MOCOOP.TEXT_LOSS_WEIGHT = 5.0
    # Router reference similarity: "mean" = cos(v, group feature) (paper Eq. 5-6);
    # "class" = cos(v, group prototype of the true class) (release).
    cfg.TRAINER.MOCOOP.ROUTER_TARGET = "mean"
    # Added to the two largest reference similarities before the softmax (release: 10).
    cfg.TRAINER.MOCOOP.ROUTER_TARGET_TOP2_BOOST = 0.0
    # tau_r of W_hard = softmax(sim / tau_r). 1.0 in both presets: the paper's Eq. 6 has no
    # temperature (its text sets 0.07 for Eq. 3 and Eq. 8 only) and the release uses 1;
    # 0.07 is an ablation (paper_vit_b16_ep25_router_tau007.yaml).
    cfg.TRAINER.MOCOOP.ROUTER_TEMPERATURE = 1.0
    # "router_to_hard" = KL(W_router || W_hard) (paper Eq. 7); "hard_to_router" (release).
    cfg.TRAINER.MOCOOP.ROUTER_KL = "router_to_hard"
    # "lasp" = paper Eq. 8-9 (hard features classified among soft features); "prototype" =
    # release (soft features classified among group prototypes).
    cfg.TRAINER.MOCOOP.TEXT_LOSS_FORM = "lasp"
    # tau_t of the text loss (paper 0.07, release 1.0).
    cfg.TRAINER.MOCOOP.TEXT_TEMPERATURE = 0.07
    # tau of L_cls (Eq. 3): 0 uses CLIP's logit scale (100 for pretrained CLIP), as both presets
    # do; the paper's text sets 0.07. Logits are only rescaled, so predictions do not change.
    cfg.TRAINER.MOCOOP.CLS_TEMPERATURE = 0.0
    # Shared learnable bias added to every soft text feature before normalising (release).
    cfg.TRAINER.MOCOOP.TEXT_BIAS = False
    # Train the LayerNorms of the image transformer's residual blocks (ln_1, ln_2; not ln_pre or
    # ln_post), as the release does, at this multiple of OPTIM.LR. Needs a ViT image tower.
    cfg.TRAINER.MOCOOP.FINETUNE_IMAGE_LN = False
    cfg.TRAINER.MOCOOP.IMAGE_LN_LR_MULT = 0.1
    # Base-to-new training: the text loss and router targets also cover the new class NAMES
    # (no new-class images), as LASP-V and the paper do.
    cfg.TRAINER.MOCOOP.VIRTUAL_CLASSES = True


CHOICES = {
    "GROUPING": ("dataset", "single"),
    "ROUTER_TARGET": ("mean", "class"),
    "ROUTER_KL": ("router_to_hard", "hard_to_router"),
    "TEXT_LOSS_FORM": ("lasp", "prototype"),
}


@dataclass(frozen=True)
class MixtureOptions:
    """TRAINER.MOCOOP's model settings, as the model uses them (see `add_config`)."""

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

    @classmethod
    def from_cfg(cls, opts):
        return cls(
            opts.TOPK,
            opts.ROUTER_LOSS_WEIGHT,
            opts.TEXT_LOSS_WEIGHT,
            opts.ROUTER_TARGET,
            opts.ROUTER_TARGET_TOP2_BOOST,
            opts.ROUTER_TEMPERATURE,
            opts.ROUTER_KL,
            opts.TEXT_LOSS_FORM,
            opts.TEXT_TEMPERATURE,
            opts.CLS_TEMPERATURE,
            opts.TEXT_BIAS,
            opts.FINETUNE_IMAGE_LN,
        )


def resblock_norms(image_encoder):
    """Weights and biases of the LayerNorms inside the image transformer's residual blocks
    (ln_1, ln_2), which the release trains; ln_pre and ln_post stay frozen, as there."""
    blocks = getattr(getattr(image_encoder, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ValueError(
            "TRAINER.MOCOOP.FINETUNE_IMAGE_LN needs a ViT image tower (residual blocks with ln_1/ln_2); "
            "set it to False for a ResNet CLIP"
        )
    # fp32 in every PREC mode: OpenAI's fp16 layout keeps LayerNorms in fp32.
    return [p for block in blocks for norm in (block.ln_1, block.ln_2) for p in norm.parameters()]


class ExpertPrompts(nn.Module):
    """G soft prompts over the text classes, as one flat context table."""

    def __init__(self, templates, text_classnames, clip_model, truncate):
        super().__init__()
        forms = [PromptForm.from_template(t) for t in templates]
        self.assembler = PromptAssembler(
            forms, text_classnames, clip_model.token_embedding, truncate=truncate
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self, rows=None):
        return self.assembler(self.ctx, rows)


class MixtureCLIP(CachedTextFeatures, PromptedCLIP):
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
        super().__init__(clip_model)
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
        self.router = Router(clip_model.text_projection.shape[1], self.num_experts)
        embed_dim = clip_model.text_projection.shape[1]
        self.text_bias = nn.Parameter(torch.zeros(embed_dim)) if options.text_bias else None
        self.image_norms = resblock_norms(self.image_encoder) if options.finetune_image_ln else []
        for p in self.image_norms:
            p.requires_grad_(True)

        # Hard features: every template of every group for every text class, once, frozen.
        hard = encode_templates(text_encoder, clip_model.token_embedding, templates, text_classnames)
        prototypes, group_mean = mixture.group_features(hard, groups)
        self.register_buffer("hard", hard, persistent=False)
        self.register_buffer("prototypes", prototypes, persistent=False)
        self.register_buffer("group_mean", group_mean, persistent=False)
        # Rows of the classification classes (the first C text classes) of every expert.
        rows = torch.arange(self.num_experts)[:, None] * self.num_text_classes + torch.arange(num_classes)
        self.register_buffer("class_rows", rows.flatten(), persistent=False)

    def soft_features(self, rows=None):
        """Normalised soft features [G, C', D] of the given prompt rows (all text classes by default)."""
        feats = self.text_encoder(*self.prompt_learner(rows)).float()
        if self.text_bias is not None:
            feats = feats + self.text_bias
        return F.normalize(feats, dim=-1).view(self.num_experts, -1, feats.shape[-1])

    def route(self, v):
        """Router scores `[B, G]` and the top-K routing of normalised image features `v`."""
        scores = self.router(v).float()  # fp32 routing and losses under autocast too
        return scores, Routing(*topk_softmax(scores, self.options.top_k))

    def router_target(self, v, label):
        """W_hard `[B, G]` (Eq. 6), the router loss's detached reference distribution."""
        opts = self.options
        return mixture.router_target(
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

    def classify(self, image):
        return self.classify_features(self.encode_image(image))

    def classify_features(self, v):
        """`classify` from normalised image features."""
        _, routing = self.route(v)
        return mixture.mix_expert_logits(v, self.text_features(), *routing, self.scale()), routing

    def scale(self):
        """1 / tau of the classification logits (CLIP's logit scale unless CLS_TEMPERATURE)."""
        tau = self.options.cls_temperature
        return 1.0 / tau if tau > 0 else self.logit_scale.exp().float()

    def losses(self, image, label):
        opts = self.options
        v = self.encode_image(image)
        scores, routing = self.route(v)
        soft = self.soft_features()  # one encoder call: all experts x all text classes
        logits = mixture.mix_expert_logits(v, soft[:, : self.num_classes], *routing, self.scale())
        terms = {"loss_cls": F.cross_entropy(logits, label)}
        if opts.router_loss_weight:
            loss = mixture.router_loss(scores, self.router_target(v, label), opts.router_kl)
            terms["loss_router"] = opts.router_loss_weight * loss
        if opts.text_loss_weight:
            if opts.text_loss_form == "lasp":
                text = mixture.text_loss_lasp(soft, self.hard, self.groups, opts.text_temperature)
            else:
                text = mixture.text_loss_prototype(soft, self.prototypes, opts.text_temperature)
            terms["loss_text"] = opts.text_loss_weight * text
        return terms, logits, routing


def expert_groups(cfg):
    """(template index lists per expert, flat templates) of the model's prompts, validated."""
    prompts = model_prompts(cfg)
    templates = [
        check_template(t, "DATASET.PROMPTS.EXPERT_TEMPLATES entry") for t in prompts.EXPERT_TEMPLATES
    ]
    groups = mixture.validate_groups(prompts.EXPERT_GROUPS, templates)
    if cfg.TRAINER.MOCOOP.GROUPING == "single":
        groups = [list(range(len(templates)))]
    return groups, templates


@TRAINER_REGISTRY.register()
class MoCoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    routing_stats_stem = "expert_stats"

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOCOOP
        for key, allowed in CHOICES.items():
            if opts[key] not in allowed:
                raise ValueError(f"TRAINER.MOCOOP.{key} must be one of {allowed}, not {opts[key]!r}")
        groups, _ = expert_groups(cfg)
        if not 1 <= opts.TOPK <= len(groups):
            raise ValueError(
                f"TRAINER.MOCOOP.TOPK must be between 1 and the number of experts ({len(groups)}), not {opts.TOPK}"
            )

    def text_classnames(self):
        """This run's classes first (labels index them directly), then, with virtual classes,
        the dataset's other class names in label order."""
        names = list(self.classnames)
        if self.cfg.TRAINER.MOCOOP.VIRTUAL_CLASSES:
            own = set(names)
            names += [c for c in self.all_classnames if c not in own]
        return names

    def trains_clip_weights(self):
        return self.cfg.TRAINER.MOCOOP.FINETUNE_IMAGE_LN

    def make_model(self, clip_model):
        cfg = self.cfg
        groups, templates = expert_groups(cfg)
        text_names = self.text_classnames()
        print(
            f"MoCoOp: {len(groups)} experts, top-{cfg.TRAINER.MOCOOP.TOPK}, {len(text_names)} text classes "
            f"({len(text_names) - len(self.classnames)} virtual)"
        )
        options = MixtureOptions.from_cfg(cfg.TRAINER.MOCOOP)
        encoder = self.build_text_encoder(clip_model)
        return MixtureCLIP(
            clip_model,
            encoder,
            groups,
            templates,
            len(self.classnames),
            text_names,
            options,
            cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
        )

    def param_groups(self):
        """Image-encoder LayerNorms (release preset) learn at IMAGE_LN_LR_MULT x OPTIM.LR."""
        norms = self.model.image_norms
        if not norms:
            return None
        ids = {id(p) for p in norms}
        prompt_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        lr = self.cfg.OPTIM.LR * self.cfg.TRAINER.MOCOOP.IMAGE_LN_LR_MULT
        return [{"params": prompt_params}, {"params": norms, "lr": lr}]
