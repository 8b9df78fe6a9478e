"""KgCoOp: Yao, Zhang, Xu. "Visual-Language Prompt Tuning with Knowledge-guided Context
Optimization". CVPR 2023.

Dassl trainer: the config keys of KgCoOp and the model they build
(`clipprompt.methods.kgcoop`: CoOp's prompt trained with cross-entropy plus
`λ · (1 - mean_c cos(w_c, w_c^clip))` towards the dataset's hand-crafted prompt).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.kgcoop import KnowledgeGuidedCLIP
from clipprompt.templates import check_template

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.KGCOOP = CN()
    # Number of learnable context vectors M (the paper: 4).
    cfg.TRAINER.KGCOOP.N_CTX = 4
    # Words initialising the context ("" = random N(0, 0.02^2)); must be N_CTX BPE tokens.
    cfg.TRAINER.KGCOOP.CTX_INIT = "a photo of a"
    # λ, the weight of the knowledge-guided term 1 - mean_c cos(w_c, w_c^clip) (the paper: 8.0).
    cfg.TRAINER.KGCOOP.W = 8.0


def knowledge_template(prompts):
    """The hand-crafted prompt of the knowledge-guided term: DATASET.PROMPTS.KNOWLEDGE_TEMPLATE
    where set, else the dataset's TEMPLATE."""
    key = "KNOWLEDGE_TEMPLATE" if prompts.KNOWLEDGE_TEMPLATE else "TEMPLATE"
    return check_template(prompts[key], f"DATASET.PROMPTS.{key}")


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("KgCoOp", "vit_b16_ep100_ctxv1", True),)
    identity_keys = ("TRAINER.KGCOOP.N_CTX",)

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.KGCOOP
        template = knowledge_template(self.cfg.DATASET.PROMPTS)
        print(f"Hand-crafted prompt of the knowledge-guided term: {template!r}")
        text_encoder = self.build_text_encoder(clip_model)
        prompt = self.context_prompt(clip_model, opts)
        return KnowledgeGuidedCLIP(clip_model, prompt, text_encoder, template, self.classnames, opts.W)
