"""KgCoOp: Yao, Zhang, Xu. "Visual-Language Prompt Tuning with Knowledge-guided Context
Optimization". CVPR 2023.

CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]` trained with cross-entropy plus
`λ · (1 - mean_c cos(w_c, w_c^clip))`, which keeps the learned class text features `w_c` close
to those of the dataset's hand-crafted prompt `w_c^clip` (`clipprompt.knowledge`). The
hand-crafted features come from the frozen CLIP, so they are computed once in `build_model`;
evaluation uses only the learned prompts, encoded once per evaluation.
"""

import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.knowledge import knowledge_guided_loss
from clipprompt.text_encoder import encode_templates

from . import coop
from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.KGCOOP = CN()
    # Number of learnable context vectors M (the paper: 4).
    cfg.TRAINER.KGCOOP.N_CTX = 4
    # Words initialising the context ("" = random N(0, 0.02^2)); must be N_CTX BPE tokens.
    cfg.TRAINER.KGCOOP.CTX_INIT = "a photo of a"
    # λ, the weight of the knowledge-guided term 1 - mean_c cos(w_c, w_c^clip) (the paper: 8.0).
    cfg.TRAINER.KGCOOP.W = 8.0


class PromptLearner(coop.PromptLearner):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(cfg, classnames, clip_model, cfg.TRAINER.KGCOOP)


class KnowledgeGuidedCLIP(coop.CustomCLIP):
    """CoOp's model holding the hand-crafted class features `[C, D]` (a constant buffer)."""

    def __init__(self, prompt_learner, text_encoder, clip_model, hard_features):
        super().__init__(prompt_learner, text_encoder, clip_model)
        # Rebuilt from the frozen CLIP with the model; checkpoints do not carry it.
        self.register_buffer("hard_features", hard_features, persistent=False)

    def classify(self, image, text_features):
        return self.logit_scale.exp() * self.encode_image(image) @ text_features.t()


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    add_config = staticmethod(add_config)

    def knowledge_template(self):
        key = "KNOWLEDGE_TEMPLATE" if self.cfg.DATASET.PROMPTS.KNOWLEDGE_TEMPLATE else "TEMPLATE"
        return self.dataset_template(key)

    def build_model(self):
        template = self.knowledge_template()
        print(f"Hand-crafted prompt of the knowledge-guided term: {template!r}")
        clip_model = self.load_clip()
        text_encoder = self.build_text_encoder(clip_model)
        hard_features = encode_templates(
            text_encoder, clip_model.token_embedding, [template], self.classnames
        )[0]
        prompt_learner = PromptLearner(self.cfg, self.classnames, clip_model)
        self.model = KnowledgeGuidedCLIP(prompt_learner, text_encoder, clip_model, hard_features)
        self.register_learnable(self.model)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            # One encoding of the prompts serves both terms.
            text_features = self.model.compute_text_features()
            logits = self.model.classify(image, text_features).float()
        losses = {
            "loss_ce": F.cross_entropy(logits, label),
            "loss_kg": self.cfg.TRAINER.KGCOOP.W
            * knowledge_guided_loss(text_features, self.model.hard_features),
        }
        return self.step(losses, logits, label)
