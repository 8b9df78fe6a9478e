"""MoPD: Chen, Fu, Zhang. "MoPD: Mixture-of-Prompts Distillation for Vision-Language Models".
IEEE Transactions on Multimedia 2025 (arXiv 2412.19087).

Dassl trainer: the config keys of MoPD and the model they build (`clipprompt.methods.mopd`:
CoOp's soft prompt as the student, distilled from the hand-crafted teachers a gate picks per
image; docs/MOPD.md).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.mopd import COMBINES, DistillationOptions, DistilledCLIP, teacher_pool
from clipprompt.text_encoder import encode_templates

from .config import model_prompts
from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.MOPD = CN()
    # Weight W of the student's cross-entropy; the distillation loss L_mpd gets 1 - W.
    cfg.TRAINER.MOPD.W = 0.8
    # Weight W2 of the selection loss L_mps (it trains the gate only).
    cfg.TRAINER.MOPD.W2 = 0.1
    # Number T of teachers the gate keeps per image (top-T, softmax over the kept scores).
    cfg.TRAINER.MOPD.NUM_TEACHERS = 2
    # Teacher templates: "task" (DATASET.PROMPTS.TEACHER_TEMPLATES), a shared pool of
    # clipprompt.hard_prompts.POOLS ("lasp", "noisy", ...), or several joined by "+"
    # ("task+noisy"), concatenated in that order.
    cfg.TRAINER.MOPD.POOL = "task"
    # weighted_kl: sum_h w_h KL(p_h || p_s); mixture: KL(sum_h w_h p_h || p_s). Same student
    # gradient, different gate gradient.
    cfg.TRAINER.MOPD.TEACHER_COMBINE = "weighted_kl"
    # Temperature Tkd of the distillation softmaxes (the loss is scaled by Tkd^2).
    cfg.TRAINER.MOPD.DISTILL_TEMPERATURE = 1.0
    # Number of learnable context vectors of the student, all before the class name.
    cfg.TRAINER.MOPD.N_CTX = 4
    # Words initialising the student context ("" = random N(0, 0.02^2)); N_CTX BPE tokens.
    cfg.TRAINER.MOPD.CTX_INIT = "a photo of a"


@TRAINER_REGISTRY.register()
class MoPD(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("MoPD", "vit_b16_c4_bs128", True),)
    identity_keys = ("TRAINER.MOPD.N_CTX", "TRAINER.MOPD.POOL")

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOPD
        num = len(teacher_pool(opts.POOL, model_prompts(cfg).TEACHER_TEMPLATES))
        if not 1 <= opts.NUM_TEACHERS <= num:
            raise ValueError(
                f"TRAINER.MOPD.NUM_TEACHERS must be in 1..{num} (pool {opts.POOL!r}), not {opts.NUM_TEACHERS}"
            )
        if opts.TEACHER_COMBINE not in COMBINES:
            raise ValueError(
                f"TRAINER.MOPD.TEACHER_COMBINE must be one of {COMBINES}, not {opts.TEACHER_COMBINE!r}"
            )
        if not opts.DISTILL_TEMPERATURE > 0:
            raise ValueError(
                f"TRAINER.MOPD.DISTILL_TEMPERATURE must be positive, not {opts.DISTILL_TEMPERATURE}"
            )
        if not 0 <= opts.W <= 1 or opts.W2 < 0:
            raise ValueError(f"TRAINER.MOPD.W must be in [0, 1] and W2 >= 0 (got W {opts.W}, W2 {opts.W2})")

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.MOPD
        templates = teacher_pool(opts.POOL, model_prompts(self.cfg).TEACHER_TEMPLATES)
        encoder = self.build_text_encoder(clip_model)
        print(f"Teacher pool {opts.POOL!r}: {len(templates)} templates, top {opts.NUM_TEACHERS} per image")
        teacher_features = encode_templates(encoder, encoder.token_embedding, templates, self.classnames)
        prompt = self.context_prompt(clip_model, opts)
        options = DistillationOptions(
            opts.NUM_TEACHERS, opts.W, opts.W2, opts.DISTILL_TEMPERATURE, opts.TEACHER_COMBINE
        )
        return DistilledCLIP(clip_model, prompt, encoder, templates, teacher_features, options)
