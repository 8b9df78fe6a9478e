"""CoOp: Zhou, Yang, Loy, Liu. "Learning to Prompt for Vision-Language Models". IJCV 2022.

Prompt `[SOS] v1 .. vM CLASS . [EOS]` with M learnable context vectors shared by all classes
(or one set per class with CSC), optimised with cross-entropy through the frozen CLIP.
"""

import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from clipprompt.caching import CachedTextFeatures
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm

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


class PromptLearner(nn.Module):
    """CoOp's context table over this run's classes; `opts` is the trainer's config node
    (N_CTX, CTX_INIT and, for CoOp, CSC and CLASS_TOKEN_POSITION). KgCoOp, MoPD and CoCoOp
    reuse it with their own nodes."""

    def __init__(self, cfg, classnames, clip_model, opts=None):
        super().__init__()
        opts = cfg.TRAINER.COOP if opts is None else opts
        form = PromptForm.coop(opts.N_CTX, opts.CTX_INIT, opts.get("CLASS_TOKEN_POSITION", "end"))
        self.assembler = PromptAssembler(
            [form],
            classnames,
            clip_model.token_embedding,
            class_specific=opts.get("CSC", False),
            truncate=cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self):
        return self.assembler(self.ctx)


class PromptedCLIP(nn.Module):
    """Frozen CLIP towers plus a prompt learner; shared by the CoOp-style models."""

    def __init__(self, prompt_learner, text_encoder, clip_model):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def encode_image(self, image):
        return F.normalize(self.image_encoder(image.to(self.dtype)).float(), dim=-1)


class CustomCLIP(CachedTextFeatures, PromptedCLIP):
    def compute_text_features(self):
        return F.normalize(self.text_encoder(*self.prompt_learner()).float(), dim=-1)

    def forward(self, image):
        return self.logit_scale.exp() * self.encode_image(image) @ self.text_features().t()


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    add_config = staticmethod(add_config)

    def build_model(self):
        self.model = self.build_custom_clip(self.load_clip())
        self.register_learnable(self.model)

    def build_custom_clip(self, clip_model):
        prompt_learner = PromptLearner(self.cfg, self.classnames, clip_model)
        return CustomCLIP(prompt_learner, self.build_text_encoder(clip_model), clip_model)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.model(image).float()
        return self.step({"loss_ce": F.cross_entropy(logits, label)}, logits, label)
