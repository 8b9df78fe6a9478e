"""MaPLe: Khattak, Rasheed, Maaz, Khan, Khan. "MaPLe: Multi-modal Prompt Learning". CVPR 2023.

Dassl trainer: the config keys of MaPLe and the model they build (`clipprompt.methods.maple`:
deep text prompts in the first J layers, the image prompts of the same layers produced from them
by linear coupling functions, cross-entropy). Configs as released:
`vit_b16_c2_ep5_batch4_2ctx` (base-to-new and few-shot: n = 2, J = 9, 5 epochs, LR 0.0035) and
`vit_b16_c2_ep5_batch4_2ctx_cross_datasets` (cross-dataset and domain generalisation: J = 3,
2 epochs, LR 0.0026).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.ivlp import DeepPromptCLIP
from clipprompt.methods.maple import CoupledPrompts

from .ivlp import check_towers
from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.MAPLE = CN()
    # Learnable text tokens per layer n (and image tokens, one per coupled text token).
    cfg.TRAINER.MAPLE.N_CTX = 2
    # Words whose first N_CTX BPE tokens initialise layer 0; the rest stay as text before the
    # class name ("a photo of a", n = 2: "P1 P2 of a CLASS."). "" = random N(0, 0.02^2).
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    # J: layers of both towers carrying prompts, layer 0 included (at most either tower's blocks).
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("MaPLe", "vit_b16_c2_ep5_batch4_2ctx", True),)
    identity_keys = ("TRAINER.MAPLE.N_CTX", "TRAINER.MAPLE.CTX_INIT", "TRAINER.MAPLE.PROMPT_DEPTH")

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        if cfg.TRAINER.MAPLE.PROMPT_DEPTH < 1:
            raise ValueError(
                f"TRAINER.MAPLE.PROMPT_DEPTH must be at least 1 (layer 0), not {cfg.TRAINER.MAPLE.PROMPT_DEPTH}"
            )

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.MAPLE
        depth = (opts.PROMPT_DEPTH, "TRAINER.MAPLE.PROMPT_DEPTH")
        check_towers(clip_model, self.cfg.MODEL.BACKBONE.NAME, "MaPLe", depth, depth)
        truncate = self.cfg.TRAINER.TEXT_ENCODER.TRUNCATE
        prompts = CoupledPrompts(self.classnames, clip_model, opts.N_CTX, opts.CTX_INIT, depth[0], truncate)
        return DeepPromptCLIP(clip_model, prompts, self.build_text_encoder(clip_model))
