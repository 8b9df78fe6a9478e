"""Zero-shot CLIP: Radford et al. "Learning Transferable Visual Models From Natural Language
Supervision". ICML 2021.

Dassl trainer: the template choice and the model it builds (`clipprompt.methods.zeroshot`: class
weights are the normalised text features of hand-crafted prompts, the dataset's CoOp template or
an ensemble). Nothing is trained: train.py evaluates it directly.
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.zeroshot import ENSEMBLES, HandCraftedCLIP

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.ZEROSHOT = CN()
    # Templates: "dataset" (DATASET.PROMPTS.TEMPLATE), "imagenet80" (CLIP's 80 ImageNet
    # templates) or "ensemble7" (CLIP's 7 selected templates plus the dataset template).
    cfg.TRAINER.ZEROSHOT.TEMPLATES = "dataset"


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("ZeroshotCLIP", "vit_b16", False),)

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        choice = cfg.TRAINER.ZEROSHOT.TEMPLATES
        if choice not in ENSEMBLES:
            raise ValueError(f"TRAINER.ZEROSHOT.TEMPLATES must be one of {list(ENSEMBLES)}, not {choice!r}")

    def make_model(self, clip_model):
        templates = ENSEMBLES[self.cfg.TRAINER.ZEROSHOT.TEMPLATES](self.dataset_template())
        shown = templates if len(templates) < 10 else templates[:3] + ["..."]
        print(f"Zero-shot templates ({len(templates)}): {shown}")
        return HandCraftedCLIP(clip_model, self.build_text_encoder(clip_model), templates, self.classnames)
