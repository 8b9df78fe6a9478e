"""MoCoOp: Du, Niu, Zhao. "Mixture of Prompt Learning for Vision Language Models".
arXiv 2409.12011; Frontiers in Artificial Intelligence 2025.

G soft prompts (experts), each initialised from the first hand-crafted template of a group;
a router on the image feature picks the top-K experts per image and mixes their class
features. Training adds hard-prompt-guided routing (L_router) and grouped text supervision
(L_text): L = L_cls + lambda1 * L_router + lambda2 * L_text. Both the paper's equations and
the authors' release are available as config presets (README, "MoCoOp presets").
"""

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from clipprompt import mixture
from clipprompt.caching import CachedTextFeatures
from clipprompt.prompts import PromptAssembler
from clipprompt.routing import Router, RoutingStats, topk_softmax
from clipprompt.templates import PromptForm, check_template
from clipprompt.text_encoder import encode_templates

from .prompt_trainer import PromptTrainer, model_prompts


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
    # tau_r of W_hard = softmax(sim / tau_r) (paper 0.07, release 1.0).
    cfg.TRAINER.MOCOOP.ROUTER_TEMPERATURE = 0.07
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
    # Train the image encoder's LayerNorms (release), at this multiple of OPTIM.LR.
    cfg.TRAINER.MOCOOP.FINETUNE_IMAGE_LN = False
    cfg.TRAINER.MOCOOP.IMAGE_LN_LR_MULT = 0.1
    # Base-to-new training: the text loss and router targets also cover the new class NAMES
    # (no new-class images), as LASP-V and the paper do.
    cfg.TRAINER.MOCOOP.VIRTUAL_CLASSES = True


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


class MixtureCLIP(CachedTextFeatures, nn.Module):
    def __init__(self, cfg, groups, templates, classnames, text_classnames, clip_model, text_encoder):
        super().__init__()
        opts = cfg.TRAINER.MOCOOP
        self.opts = opts
        self.num_experts = len(groups)
        self.num_classes = len(classnames)
        self.num_text_classes = len(text_classnames)
        self.groups = groups
        self.image_encoder = clip_model.visual
        self.text_encoder = text_encoder
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        first_templates = [templates[idx[0]] for idx in groups]
        self.prompt_learner = ExpertPrompts(
            first_templates, text_classnames, clip_model, cfg.TRAINER.TEXT_ENCODER.TRUNCATE
        )
        self.router = Router(clip_model.text_projection.shape[1], self.num_experts)
        embed_dim = clip_model.text_projection.shape[1]
        self.text_bias = nn.Parameter(torch.zeros(embed_dim)) if opts.TEXT_BIAS else None
        self.image_norms = []
        if opts.FINETUNE_IMAGE_LN:
            # fp32 in every PREC mode: OpenAI's fp16 layout keeps LayerNorms in fp32.
            self.image_norms = [
                p for m in self.image_encoder.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
            ]
            if not self.image_norms:
                raise ValueError(
                    "TRAINER.MOCOOP.FINETUNE_IMAGE_LN needs an image tower with LayerNorms (a ViT)"
                )
            for p in self.image_norms:
                p.requires_grad_(True)

        # Hard features: every template of every group for every text class, once, frozen.
        hard = encode_templates(text_encoder, clip_model.token_embedding, templates, text_classnames)
        prototypes, group_mean = mixture.group_features(hard, groups)
        self.register_buffer("hard", hard, persistent=False)
        self.register_buffer("prototypes", prototypes, persistent=False)
        self.register_buffer("group_mean", group_mean, persistent=False)
        # Rows of the classification classes (the first C text classes) of every expert.
        rows = torch.arange(self.num_experts)[:, None] * self.num_text_classes + torch.arange(
            self.num_classes
        )
        self.register_buffer("class_rows", rows.flatten(), persistent=False)

    def soft_features(self, rows=None):
        """Normalised soft features [G, C', D] of the given prompt rows (all text classes by default)."""
        feats = self.text_encoder(*self.prompt_learner(rows)).float()
        if self.text_bias is not None:
            feats = feats + self.text_bias
        return F.normalize(feats, dim=-1).view(self.num_experts, -1, feats.shape[-1])

    def encode_image(self, image):
        return F.normalize(self.image_encoder(image.to(self.dtype)).float(), dim=-1)

    def route(self, v):
        scores = self.router(v).float()  # fp32 routing and losses under autocast too
        index, weight = topk_softmax(scores, self.opts.TOPK)
        return scores, index, weight

    def compute_text_features(self):
        """Soft features of the classification classes for every expert (cached at evaluation)."""
        return self.soft_features(self.class_rows)

    def classify(self, image):
        """Logits with the top-K experts, and the routing that produced them."""
        return self.classify_features(self.encode_image(image))

    def classify_features(self, v):
        """`classify` from normalised image features."""
        _, index, weight = self.route(v)
        logits = mixture.mix_expert_logits(v, self.text_features(), index, weight, self.scale())
        return logits, index, weight

    def scale(self):
        """1 / tau of the classification logits (CLIP's logit scale unless CLS_TEMPERATURE)."""
        tau = self.opts.CLS_TEMPERATURE
        return 1.0 / tau if tau > 0 else self.logit_scale.exp().float()

    def forward(self, image):
        return self.classify(image)[0]

    def losses(self, image, label):
        """Weighted loss terms, logits and routing for one training batch."""
        opts = self.opts
        v = self.encode_image(image)
        scores, index, weight = self.route(v)
        soft = self.soft_features()  # one encoder call: all experts x all text classes
        logits = mixture.mix_expert_logits(v, soft[:, : self.num_classes], index, weight, self.scale())
        terms = {"loss_cls": F.cross_entropy(logits, label)}
        if opts.ROUTER_LOSS_WEIGHT:
            target = mixture.router_target(
                v,
                label,
                self.prototypes,
                self.group_mean,
                opts.ROUTER_TARGET,
                opts.ROUTER_TARGET_TOP2_BOOST,
                opts.ROUTER_TEMPERATURE,
            )
            terms["loss_router"] = opts.ROUTER_LOSS_WEIGHT * mixture.router_loss(
                scores, target, opts.ROUTER_KL
            )
        if opts.TEXT_LOSS_WEIGHT:
            if opts.TEXT_LOSS_FORM == "lasp":
                text = mixture.text_loss_lasp(soft, self.hard, self.groups, opts.TEXT_TEMPERATURE)
            else:
                text = mixture.text_loss_prototype(soft, self.prototypes, opts.TEXT_TEMPERATURE)
            terms["loss_text"] = opts.TEXT_LOSS_WEIGHT * text
        return terms, logits, index, weight


@TRAINER_REGISTRY.register()
class MoCoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    routing_stats_stem = "expert_stats"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOCOOP
        choices = {
            "GROUPING": ("dataset", "single"),
            "ROUTER_TARGET": ("mean", "class"),
            "ROUTER_KL": ("router_to_hard", "hard_to_router"),
            "TEXT_LOSS_FORM": ("lasp", "prototype"),
        }
        for key, allowed in choices.items():
            if opts[key] not in allowed:
                raise ValueError(f"TRAINER.MOCOOP.{key} must be one of {allowed}, not {opts[key]!r}")

    def expert_groups(self):
        prompts = model_prompts(self.cfg)
        templates = [
            check_template(t, "DATASET.PROMPTS.EXPERT_TEMPLATES entry") for t in prompts.EXPERT_TEMPLATES
        ]
        groups = mixture.validate_groups(prompts.EXPERT_GROUPS, templates)
        if self.cfg.TRAINER.MOCOOP.GROUPING == "single":
            groups = [list(range(len(templates)))]
        if not 1 <= self.cfg.TRAINER.MOCOOP.TOPK <= len(groups):
            raise ValueError(
                f"TRAINER.MOCOOP.TOPK must be between 1 and the number of experts ({len(groups)})"
            )
        return groups, templates

    def text_classnames(self):
        """This run's classes first (labels index them directly), then, with virtual classes,
        the dataset's other class names in label order."""
        names = list(self.classnames)
        if self.cfg.TRAINER.MOCOOP.VIRTUAL_CLASSES:
            own = set(names)
            names += [c for c in self.all_classnames if c not in own]
        return names

    def build_model(self):
        cfg = self.cfg
        groups, templates = self.expert_groups()
        clip_model = self.load_clip()
        text_names = self.text_classnames()
        print(
            f"MoCoOp: {len(groups)} experts, top-{cfg.TRAINER.MOCOOP.TOPK}, {len(text_names)} text classes "
            f"({len(text_names) - len(self.classnames)} virtual)"
        )
        self.model = MixtureCLIP(
            cfg,
            groups,
            templates,
            self.classnames,
            text_names,
            clip_model,
            self.build_text_encoder(clip_model),
        )
        self.register_learnable(self.model, param_groups=self.param_groups())
        self.routing_stats = RoutingStats([templates[idx[0]] for idx in groups], cfg.TRAINER.MOCOOP.TOPK)

    def param_groups(self):
        """Image-encoder LayerNorms (release preset) learn at IMAGE_LN_LR_MULT x OPTIM.LR."""
        norms = self.model.image_norms
        if not norms:
            return None
        ids = {id(p) for p in norms}
        prompt_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        lr = self.cfg.OPTIM.LR * self.cfg.TRAINER.MOCOOP.IMAGE_LN_LR_MULT
        return [{"params": prompt_params}, {"params": norms, "lr": lr}]

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            terms, logits, index, weight = self.model.losses(image, label)
        self.routing_stats.update(index, weight)
        return self.step(terms, logits, label)

    def model_inference(self, image):
        with self.autocast():
            logits, index, weight = self.model.classify(image)
        self.routing_stats.update(index, weight)
        return logits.float()
