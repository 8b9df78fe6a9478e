"""Zero-shot CLIP: Radford et al. "Learning Transferable Visual Models From Natural Language
Supervision". ICML 2021.

Class weights are the normalised text features of hand-crafted prompts: the dataset's CoOp
template, or an ensemble (the mean of the normalised features over several templates,
renormalised) as in CLIP's ImageNet prompt engineering. Nothing is trained.
"""

import torch.nn.functional as F

from ..hard_prompts import POOLS
from ..model import FixedFeaturesCLIP
from ..text_encoder import encode_templates

# TRAINER.ZEROSHOT.TEMPLATES: the templates of each choice, given the dataset's template.
ENSEMBLES = {
    "dataset": lambda template: [template],
    "imagenet80": lambda template: list(POOLS["imagenet80"]),
    "ensemble7": lambda template: list(POOLS["ensemble7"]) + [template],
}


class HandCraftedCLIP(FixedFeaturesCLIP):
    """Fixed class weights: the (ensembled) text features of hand-crafted prompts."""

    def __init__(self, clip_model, text_encoder, templates, classnames):
        per_template = encode_templates(text_encoder, text_encoder.token_embedding, templates, classnames)
        super().__init__(clip_model, F.normalize(per_template.mean(dim=0), dim=-1))
        self.template_list = list(templates)

    def templates(self):
        return list(self.template_list)
