"""Zero-shot CLIP: Radford et al. "Learning Transferable Visual Models From Natural Language
Supervision". ICML 2021.

Class weights are the normalised text features of hand-crafted prompts: the dataset's CoOp
template, or an ensemble (the mean of the normalised features over several templates,
renormalised) as in CLIP's ImageNet prompt engineering. Nothing is trained.
"""

import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.hard_prompts import POOLS
from clipprompt.model import PromptedCLIP
from clipprompt.text_encoder import encode_templates

from .prompt_trainer import PromptTrainer

ENSEMBLES = {
    "dataset": lambda template: [template],
    "imagenet80": lambda template: list(POOLS["imagenet80"]),
    "ensemble7": lambda template: list(POOLS["ensemble7"]) + [template],
}


def add_config(cfg):
    cfg.TRAINER.ZEROSHOT = CN()
    # Templates: "dataset" (DATASET.PROMPTS.TEMPLATE), "imagenet80" (CLIP's 80 ImageNet
    # templates) or "ensemble7" (CLIP's 7 selected templates plus the dataset template).
    cfg.TRAINER.ZEROSHOT.TEMPLATES = "dataset"


class ZeroshotModel(PromptedCLIP):
    """Fixed class weights: the text features of hand-crafted prompts."""

    def __init__(self, clip_model, text_features):
        super().__init__(clip_model)
        self.register_buffer("text_features", text_features)

    def classify(self, image):
        return self.similarity_logits(self.encode_image(image), self.text_features), None


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    add_config = staticmethod(add_config)

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
        encoder = self.build_text_encoder(clip_model)
        per_template = encode_templates(encoder, clip_model.token_embedding, templates, self.classnames)
        return ZeroshotModel(clip_model, F.normalize(per_template.mean(dim=0), dim=-1))
