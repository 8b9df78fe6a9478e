"""ProGrad: Zhu, Niu, Han, Wu, Zhang. "Prompt-aligned Gradient for Prompt Tuning". ICCV 2023.

Dassl trainer: the config keys of ProGrad and the model they build (`clipprompt.methods.prograd`:
CoOp's prompt trained with cross-entropy, each update projected away from the direction that
conflicts with the gradient of the KL divergence to zero-shot CLIP; the trainer base applies
the projection through the model's `gradient_guides` / `shape_gradient`).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.prograd import ProGradCLIP, WordCountPrompt, word_count_split
from clipprompt.templates import check_template

from .config import model_prompts
from .prompt_trainer import PromptTrainer

TEMPLATE_CHOICES = ("prograd", "dataset")


def add_config(cfg):
    cfg.TRAINER.PROGRAD = CN()
    # Number of learnable context vectors M (the release: 16).
    cfg.TRAINER.PROGRAD.N_CTX = 16
    # True: ProGrad's initialisation from TEMPLATE's words (the last k of the N_CTX vectors from
    # its k words, zeros before; the phrase's extra BPE tokens stay fixed before the class
    # name), as every released config sets it; False: random N(0, 0.02^2), as CoOp.
    cfg.TRAINER.PROGRAD.CTX_INIT = True
    # The template of zero-shot CLIP (the KL's teacher) and of the initialisation: "prograd" =
    # ProGrad's own per-dataset template (DATASET.PROMPTS.PROGRAD_TEMPLATE, else TEMPLATE);
    # "dataset" = CoOp's (DATASET.PROMPTS.TEMPLATE, as ZeroshotCLIP uses).
    cfg.TRAINER.PROGRAD.TEMPLATE = "prograd"
    # lambda: how much of the conflicting component the update removes (1: all of it).
    cfg.TRAINER.PROGRAD.LAMBDA = 1.0
    # T, the temperature of the KL term (scaled by T^2).
    cfg.TRAINER.PROGRAD.T = 1.0


def prograd_template(cfg):
    """The template of the teacher and the initialisation, from the prompts that shape the model
    (the training dataset's in cross-dataset evaluation)."""
    prompts = model_prompts(cfg)
    if cfg.TRAINER.PROGRAD.TEMPLATE == "prograd" and prompts.PROGRAD_TEMPLATE:
        return check_template(prompts.PROGRAD_TEMPLATE, "DATASET.PROMPTS.PROGRAD_TEMPLATE")
    return check_template(prompts.TEMPLATE, "DATASET.PROMPTS.TEMPLATE")


@TRAINER_REGISTRY.register()
class ProGrad(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("ProGrad", "vit_b16_ep50", True),)
    identity_keys = ("TRAINER.PROGRAD.N_CTX",)

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.PROGRAD
        if opts.TEMPLATE not in TEMPLATE_CHOICES:
            raise ValueError(
                f"TRAINER.PROGRAD.TEMPLATE must be one of {TEMPLATE_CHOICES}, not {opts.TEMPLATE!r}"
            )
        if opts.T <= 0 or opts.LAMBDA < 0:
            raise ValueError(
                f"TRAINER.PROGRAD.T must be positive and LAMBDA non-negative, not {opts.T} and {opts.LAMBDA}"
            )
        if opts.CTX_INIT:
            word_count_split(prograd_template(cfg), opts.N_CTX)

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.PROGRAD
        template = prograd_template(self.cfg)
        print(f"ProGrad: zero-shot CLIP's template {template!r}")
        if opts.CTX_INIT:
            truncate = self.cfg.TRAINER.TEXT_ENCODER.TRUNCATE
            prompt = WordCountPrompt(
                template, opts.N_CTX, self.classnames, clip_model.token_embedding, truncate
            )
        else:
            prompt = self.context_prompt(clip_model, CN({"N_CTX": opts.N_CTX, "CTX_INIT": ""}))
        encoder = self.build_text_encoder(clip_model)
        return ProGradCLIP(clip_model, prompt, encoder, template, self.classnames, opts.LAMBDA, opts.T)
