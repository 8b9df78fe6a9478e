"""MoCoOp: Du, Niu, Zhao. "Mixture of Prompt Learning for Vision Language Models".
arXiv 2409.12011; Frontiers in Artificial Intelligence 2025.

Dassl trainer: the config keys of MoCoOp and the model they build (`clipprompt.methods.mocoop`:
G soft prompts (experts) and a router that mixes the top K per image, trained with
L = L_cls + lambda1 * L_router + lambda2 * L_text). Both the paper's equations and the authors'
release are config presets (docs/MOCOOP.md).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.mocoop import CHOICES, MixtureCLIP, MixtureOptions, text_classnames, validate_groups
from clipprompt.templates import check_template

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


def expert_groups(cfg):
    """(template index lists per expert, flat templates) of the model's prompts, validated."""
    prompts = model_prompts(cfg)
    templates = [
        check_template(t, "DATASET.PROMPTS.EXPERT_TEMPLATES entry") for t in prompts.EXPERT_TEMPLATES
    ]
    groups = validate_groups(prompts.EXPERT_GROUPS, templates)
    if cfg.TRAINER.MOCOOP.GROUPING == "single":
        groups = [list(range(len(templates)))]
    return groups, templates


def mixture_options(opts):
    """The model's `MixtureOptions` from TRAINER.MOCOOP."""
    return MixtureOptions(
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


@TRAINER_REGISTRY.register()
class MoCoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    # The release preset encodes its prompts exactly as the paper preset: its path comparisons
    # would repeat those of the paper preset.
    benchmark_rows = (
        ("MoCoOp", "paper_vit_b16_ep25", True),
        ("MoCoOp-release", "release_vit_b16_ep25", False),
    )

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOCOOP
        choices = {"GROUPING": ("dataset", "single")} | {key.upper(): v for key, v in CHOICES.items()}
        for key, allowed in choices.items():
            if opts[key] not in allowed:
                raise ValueError(f"TRAINER.MOCOOP.{key} must be one of {allowed}, not {opts[key]!r}")
        groups, _ = expert_groups(cfg)
        if not 1 <= opts.TOPK <= len(groups):
            raise ValueError(
                f"TRAINER.MOCOOP.TOPK must be between 1 and the number of experts ({len(groups)}), not {opts.TOPK}"
            )

    def trains_clip_weights(self):
        return self.cfg.TRAINER.MOCOOP.FINETUNE_IMAGE_LN

    def make_model(self, clip_model):
        cfg = self.cfg
        groups, templates = expert_groups(cfg)
        text_names = text_classnames(self.classnames, self.all_classnames, cfg.TRAINER.MOCOOP.VIRTUAL_CLASSES)
        print(
            f"MoCoOp: {len(groups)} experts, top-{cfg.TRAINER.MOCOOP.TOPK}, {len(text_names)} text classes "
            f"({len(text_names) - len(self.classnames)} virtual)"
        )
        options = mixture_options(cfg.TRAINER.MOCOOP)
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
