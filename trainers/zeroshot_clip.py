"""Zero-shot CLIP: Radford et al. "Learning Transferable Visual Models From Natural Language
Supervision". ICML 2021.

Class weights are the normalised text features of hand-crafted prompts: the dataset's CoOp
template, or an ensemble (the mean of the normalised features over several templates,
renormalised) as in CLIP's ImageNet prompt engineering. Nothing is trained.
"""

import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from clipprompt.hard_prompts import POOLS
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


class ZeroshotModel(nn.Module):
    def __init__(self, clip_model, text_features):
        super().__init__()
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        self.register_buffer("text_features", text_features)

    def forward(self, image):
        image_features = F.normalize(self.image_encoder(image.to(self.dtype)).float(), dim=-1)
        return self.logit_scale.exp() * image_features @ self.text_features.t()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    add_config = staticmethod(add_config)

    def build_model(self):
        choice = self.cfg.TRAINER.ZEROSHOT.TEMPLATES
        if choice not in ENSEMBLES:
            raise ValueError(f"TRAINER.ZEROSHOT.TEMPLATES must be one of {list(ENSEMBLES)}, not {choice!r}")
        templates = ENSEMBLES[choice](self.dataset_template())
        print(
            f"Zero-shot templates ({len(templates)}): {templates if len(templates) < 10 else templates[:3] + ['...']}"
        )
        clip_model = self.load_clip()
        encoder = self.build_text_encoder(clip_model)
        per_template = encode_templates(encoder, clip_model.token_embedding, templates, self.classnames)
        text_features = F.normalize(per_template.mean(dim=0), dim=-1)
        self.model = ZeroshotModel(clip_model, text_features)
        self.register_learnable(self.model, name="model")

    def forward_backward(self, batch):
        raise RuntimeError("ZeroshotCLIP has nothing to train: run train.py with --eval-only")
