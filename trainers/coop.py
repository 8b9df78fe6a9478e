"""CoOp: Zhou, Yang, Loy, Liu. "Learning to Prompt for Vision-Language Models". IJCV 2022.

Dassl trainer: the config keys of CoOp's soft prompt and the model they build
(`clipprompt.methods.coop`: `[SOS] v1 .. vM CLASS . [EOS]`, M learnable context vectors shared by
all classes or one set per class with CSC, trained with cross-entropy).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.coop import SoftPromptCLIP

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.COOP = CN()
    # Number of learnable context vectors M.
    cfg.TRAINER.COOP.N_CTX = 16
    # Words initialising the context ("" = random N(0, 0.02^2)); must be N_CTX BPE tokens.
    cfg.TRAINER.COOP.CTX_INIT = ""
    # Class-specific context: one set of M vectors per class.
    cfg.TRAINER.COOP.CSC = False
    # Where the class name goes relative to the context: end, middle or front.
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("CoOp", "vit_b16_ep50", True),)
    identity_keys = ("TRAINER.COOP.N_CTX", "TRAINER.COOP.CSC", "TRAINER.COOP.CLASS_TOKEN_POSITION")

    def class_specific_tensors(self):
        return self.cfg.TRAINER.COOP.CSC

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.COOP
        prompt = self.context_prompt(clip_model, opts)
        return SoftPromptCLIP(clip_model, prompt, self.build_text_encoder(clip_model))
