"""KgCoOp: Yao, Zhang, Xu. "Visual-Language Prompt Tuning with Knowledge-guided Context
Optimization". CVPR 2023.

CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]` trained with cross-entropy plus
`λ · (1 - mean_c cos(w_c, w_c^clip))`, which keeps the learned class text features `w_c` close
to those of the dataset's hand-crafted prompt `w_c^clip` (`clipprompt.knowledge`). The
hand-crafted features come from the frozen CLIP, so they are computed once in `make_model`;
evaluation uses only the learned prompts, encoded once per evaluation.
"""

import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.knowledge import knowledge_guided_loss
from clipprompt.model import SoftPromptCLIP
from clipprompt.templates import check_template
from clipprompt.text_encoder import encode_templates

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.KGCOOP = CN()
    # Number of learnable context vectors M (the paper: 4).
    cfg.TRAINER.KGCOOP.N_CTX = 4
    # Words initialising the context ("" = random N(0, 0.02^2)); must be N_CTX BPE tokens.
    cfg.TRAINER.KGCOOP.CTX_INIT = "a photo of a"
    # λ, the weight of the knowledge-guided term 1 - mean_c cos(w_c, w_c^clip) (the paper: 8.0).
    cfg.TRAINER.KGCOOP.W = 8.0


class KnowledgeGuidedCLIP(SoftPromptCLIP):
    """CoOp's model holding the hand-crafted class features `[C, D]` (a constant buffer) and
    the weight λ of the knowledge-guided term."""

    def __init__(self, clip_model, prompt_learner, text_encoder, hard_features, weight):
        super().__init__(clip_model, prompt_learner, text_encoder)
        # Rebuilt from the frozen CLIP with the model; checkpoints do not carry it.
        self.register_buffer("hard_features", hard_features, persistent=False)
        self.weight = weight

    def losses(self, image, label):
        # One encoding of the prompts serves both terms.
        text_features = self.compute_text_features()
        logits = self.similarity_logits(self.encode_image(image), text_features)
        terms = {
            "loss_ce": F.cross_entropy(logits.float(), label),
            "loss_kg": self.weight * knowledge_guided_loss(text_features, self.hard_features),
        }
        return terms, logits, None


def knowledge_template(prompts):
    """The hand-crafted prompt of the knowledge-guided term: DATASET.PROMPTS.KNOWLEDGE_TEMPLATE
    where set, else the dataset's TEMPLATE."""
    key = "KNOWLEDGE_TEMPLATE" if prompts.KNOWLEDGE_TEMPLATE else "TEMPLATE"
    return check_template(prompts[key], f"DATASET.PROMPTS.{key}")


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    add_config = staticmethod(add_config)
    identity_keys = ("TRAINER.KGCOOP.N_CTX",)

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.KGCOOP
        template = knowledge_template(self.cfg.DATASET.PROMPTS)
        print(f"Hand-crafted prompt of the knowledge-guided term: {template!r}")
        text_encoder = self.build_text_encoder(clip_model)
        hard = encode_templates(text_encoder, clip_model.token_embedding, [template], self.classnames)[0]
        prompt = self.context_prompt(clip_model, opts)
        return KnowledgeGuidedCLIP(clip_model, prompt, text_encoder, hard, opts.W)
