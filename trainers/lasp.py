"""LASP: Bulat, Tzimiropoulos. "LASP: Text-to-Text Optimization for Language-Aware Soft Prompting
of Vision & Language Models". CVPR 2023.

Dassl trainer: the config keys of LASP and the model they build (`clipprompt.methods.lasp`:
CoOp's prompt trained with cross-entropy plus alpha times a text-to-text loss that classifies
hand-crafted prompts among the learned ones; grouped prompts, virtual classes, a text bias and
image-tower LayerNorm re-calibration as options). The paper and the authors' release are both
presets (docs/BASELINES.md, "LASP").
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.hard_prompts import LASP_34
from clipprompt.methods.lasp import LanguageAwareCLIP, LaspOptions, template_groups
from clipprompt.methods.mocoop import text_classnames
from clipprompt.templates import PromptForm, check_template

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.LASP = CN()
    # Number of learnable context vectors M of each prompt.
    cfg.TRAINER.LASP.N_CTX = 4
    # Words initialising the context (N_CTX BPE tokens; "" = random N(0, 0.02^2)).
    cfg.TRAINER.LASP.CTX_INIT = "a photo of a"
    # alpha, the weight of the text-to-text loss L_TT (0: no L_TT).
    cfg.TRAINER.LASP.TEXT_LOSS_WEIGHT = 5.0
    # The hand-crafted templates of L_TT (default: the 34 distinct templates of the release;
    # the release's own list repeats "a bad photo of the {}.", as its preset does).
    cfg.TRAINER.LASP.TEMPLATES = list(LASP_34)
    # Grouped prompts: group sizes over TEMPLATES in order, one prompt per group, supervised by
    # the group's templates; the classifier is the normalised mean of the groups' class
    # features. [] = one prompt supervised by every template (the release).
    cfg.TRAINER.LASP.GROUPS = []
    # Base-to-new training: L_TT also covers the new class NAMES (no new-class images): LASP-V.
    cfg.TRAINER.LASP.VIRTUAL_CLASSES = True
    # A learnable bias shared by all classes, added to every learned text feature before it is
    # normalised (re-calibration).
    cfg.TRAINER.LASP.TEXT_BIAS = True
    # Train the LayerNorms of the image transformer's residual blocks (ln_1, ln_2; not ln_pre or
    # ln_post) at IMAGE_LN_LR_MULT x OPTIM.LR (re-calibration). Needs a ViT image tower.
    cfg.TRAINER.LASP.FINETUNE_IMAGE_LN = True
    cfg.TRAINER.LASP.IMAGE_LN_LR_MULT = 0.1
    # With this probability per training step, L_TT sees the hand-crafted features plus
    # NOISE_STD * N(0, 1) (not renormalised), as the release does (0.5, 0.05); 0 = never.
    cfg.TRAINER.LASP.NOISE_PROB = 0.0
    cfg.TRAINER.LASP.NOISE_STD = 0.05


def lasp_templates(opts):
    return [check_template(t, "TRAINER.LASP.TEMPLATES entry") for t in opts.TEMPLATES]


@TRAINER_REGISTRY.register()
class LASP(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("LASP", "release_vit_b16", True), ("LASP-paper", "paper_vit_b16_ep10_batch1", False))
    # Which prompt serves which templates (the shapes say only how many prompts there are).
    identity_keys = ("TRAINER.LASP.N_CTX", "TRAINER.LASP.GROUPS")

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.LASP
        template_groups(opts.GROUPS, len(lasp_templates(opts)))
        if not 0 <= opts.NOISE_PROB <= 1 or opts.NOISE_STD < 0:
            raise ValueError(
                f"TRAINER.LASP.NOISE_PROB must be in [0, 1] and NOISE_STD non-negative, not "
                f"{opts.NOISE_PROB} and {opts.NOISE_STD}"
            )

    def trains_clip_weights(self):
        return self.cfg.TRAINER.LASP.FINETUNE_IMAGE_LN

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.LASP
        templates = lasp_templates(opts)
        groups = template_groups(opts.GROUPS, len(templates))
        names = text_classnames(self.classnames, self.all_classnames, opts.VIRTUAL_CLASSES)
        print(
            f"LASP: {len(groups)} prompt(s), {len(templates)} templates, {len(names)} text classes "
            f"({len(names) - len(self.classnames)} virtual)"
        )
        options = LaspOptions(
            opts.TEXT_LOSS_WEIGHT, opts.TEXT_BIAS, opts.FINETUNE_IMAGE_LN, opts.NOISE_PROB, opts.NOISE_STD
        )
        return LanguageAwareCLIP(
            clip_model,
            self.build_text_encoder(clip_model),
            PromptForm.coop(opts.N_CTX, opts.CTX_INIT),
            templates,
            groups,
            len(self.classnames),
            names,
            options,
            self.cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
        )

    def param_groups(self):
        """The image-tower LayerNorms learn at IMAGE_LN_LR_MULT x OPTIM.LR."""
        norms = self.model.image_norms
        if not norms:
            return None
        ids = {id(p) for p in norms}
        prompts = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        return [
            {"params": prompts},
            {"params": norms, "lr": self.cfg.OPTIM.LR * self.cfg.TRAINER.LASP.IMAGE_LN_LR_MULT},
        ]
