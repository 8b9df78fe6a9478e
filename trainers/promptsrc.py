"""PromptSRC: Khattak, Wasim, Naseer, Khan, Yang, Khan. "Self-regulating Prompts: Foundational
Model Adaptation without Forgetting". ICCV 2023.

Dassl trainer: the config keys of PromptSRC and the model they build
(`clipprompt.methods.promptsrc`: IVLP's deep prompts, regularised towards the frozen CLIP's text
features, image features and logits, and aggregated over epochs with Gaussian weights). Configs
as released: `vit_b16_c2_ep20_batch4_4+4ctx` (base-to-new: 4 + 4 tokens, J = 9, 20 epochs, GPA
μ 15 σ 1), `vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets` (J = 3, GPA μ 6 σ 10) and
`vit_b16_c2_ep50_batch4_4+4ctx_few_shot` (50 epochs, GPA μ 30 σ 30; μ 45 σ 5 for the five
datasets the release names, in per-dataset files).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.promptsrc import SelfRegulatingCLIP, frozen_templates, gaussian_weights

from .config import model_prompts
from .ivlp import (
    DEEP_PROMPT_KEYS,
    add_deep_prompt_keys,
    check_deep_prompt_keys,
    check_deep_towers,
    independent_prompts,
)
from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.PROMPTSRC = CN()
    add_deep_prompt_keys(cfg.TRAINER.PROMPTSRC)
    cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9
    # λ_text: weight of mean |g_p - g~| (prompted vs frozen normalised text features).
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25.0
    # λ_image: weight of mean |f_p - f~| (prompted vs frozen normalised image features).
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10.0
    # GPA: mean μ and standard deviation σ (in epochs, 1..MAX_EPOCH) of the Gaussian weights.
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15.0
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1.0
    # Templates of the frozen text features: promptsrc60 (the release's 60 ImageNet templates),
    # task (DATASET.PROMPTS.TEACHER_TEMPLATES) or a pool of clipprompt.hard_prompts.POOLS.
    cfg.TRAINER.PROMPTSRC.TEMPLATES = "promptsrc60"


@TRAINER_REGISTRY.register()
class PromptSRC(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("PromptSRC", "vit_b16_c2_ep20_batch4_4+4ctx", True),)
    identity_keys = tuple(f"TRAINER.PROMPTSRC.{k}" for k in DEEP_PROMPT_KEYS)

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.PROMPTSRC
        check_deep_prompt_keys(opts, "TRAINER.PROMPTSRC")
        gaussian_weights(opts.GPA_MEAN, opts.GPA_STD, cfg.OPTIM.MAX_EPOCH)
        frozen_templates(opts.TEMPLATES, model_prompts(cfg).TEACHER_TEMPLATES)

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.PROMPTSRC
        check_deep_towers(self, clip_model, opts, "PromptSRC")
        templates = frozen_templates(opts.TEMPLATES, model_prompts(self.cfg).TEACHER_TEMPLATES)
        print(f"Frozen text features: mean over {len(templates)} templates ({opts.TEMPLATES})")
        return SelfRegulatingCLIP(
            clip_model,
            independent_prompts(self, clip_model, opts),
            self.build_text_encoder(clip_model),
            templates,
            self.classnames,
            (opts.TEXT_LOSS_WEIGHT, opts.IMAGE_LOSS_WEIGHT),
            (opts.GPA_MEAN, opts.GPA_STD),
        )
