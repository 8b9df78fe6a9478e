"""CoCoOp: Zhou, Yang, Loy, Liu. "Conditional Prompt Learning for Vision-Language Models". CVPR 2022.

Dassl trainer: the config keys of CoCoOp and the model they build (`clipprompt.methods.cocoop`:
CoOp's context shifted per image by a meta-net; a batch of B images is encoded as B × C prompts
in one call of the truncated text encoder, `TRAINER.TEXT_ENCODER.CHUNK_SIZE` bounds its memory).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.cocoop import ConditionalCLIP, ConditionalPrompt

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.COCOOP = CN()
    # Number of learnable context vectors M (the paper's base-to-new setting: 4).
    cfg.TRAINER.COCOOP.N_CTX = 4
    # Words initialising the context ("" = random N(0, 0.02^2)); must be N_CTX BPE tokens.
    cfg.TRAINER.COCOOP.CTX_INIT = "a photo of a"
    # Hidden width of the meta-net is the image-feature width divided by this (paper: 16).
    cfg.TRAINER.COCOOP.META_NET_REDUCTION = 16


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1", True),)
    identity_keys = ("TRAINER.COCOOP.N_CTX", "TRAINER.COCOOP.META_NET_REDUCTION")

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.COCOOP
        prompt = ConditionalPrompt(
            self.classnames,
            clip_model,
            opts.N_CTX,
            opts.CTX_INIT,
            opts.META_NET_REDUCTION,
            self.cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
        )
        return ConditionalCLIP(clip_model, prompt, self.build_text_encoder(clip_model))
