"""CoCoOp: Zhou, Yang, Loy, Liu. "Conditional Prompt Learning for Vision-Language Models". CVPR 2022.

CoOp's M context vectors plus a small meta-net that maps the image feature to one token
`π(x)`, added to every context vector: `[SOS] v1+π(x) .. vM+π(x) CLASS . [EOS]`. The model
(`clipprompt.conditional`, Dassl-free so that exported classifiers use it too) encodes a batch
of B images as B × C prompts in one call of the truncated text encoder
(`TRAINER.TEXT_ENCODER.CHUNK_SIZE` bounds its memory).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.conditional import ConditionalCLIP, ConditionalPrompt

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
