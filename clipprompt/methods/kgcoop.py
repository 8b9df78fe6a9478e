"""KgCoOp: Yao, Zhang, Xu. "Visual-Language Prompt Tuning with Knowledge-guided Context
Optimization". CVPR 2023.

CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]` trained with cross-entropy plus
`λ · (1 - mean_c cos(w_c, w_c^clip))`, which keeps the learned class text features `w_c` close
to those of the dataset's hand-crafted prompt `w_c^clip`, as the released code computes it
(htyao89/KgCoOp). The paper writes the term as a mean squared Euclidean distance; for unit
vectors ||a - b||² = 2 (1 - cos(a, b)), so on normalised features the two forms differ only by a
factor 2 absorbed in λ. The hand-crafted features come from the frozen CLIP, so they are
computed once; evaluation uses only the learned prompts, encoded once per evaluation.
"""

import torch.nn.functional as F

from ..text_encoder import encode_templates
from .coop import SoftPromptCLIP


def knowledge_guided_loss(text_features, hard_features):
    """`1 - mean_c cos(w_c, w_c^clip)` over the C classes.

    `text_features` `[C, D]`: features of the learned prompts (gradients flow through them);
    `hard_features` `[C, D]`: features of the hand-crafted prompts of the same classes, in the
    same order (constants). Neither needs to be normalised. Computed in fp32.
    """
    if text_features.shape != hard_features.shape or text_features.dim() != 2:
        raise ValueError(
            f"knowledge_guided_loss needs two [C, D] tensors of the same shape, got "
            f"{list(text_features.shape)} (learned) and {list(hard_features.shape)} (hand-crafted): "
            "the hand-crafted features must be computed for the same class list"
        )
    soft = F.normalize(text_features.float(), dim=-1)
    hard = F.normalize(hard_features.float(), dim=-1)
    return 1.0 - (soft * hard).sum(dim=-1).mean()


class KnowledgeGuidedCLIP(SoftPromptCLIP):
    """CoOp's model holding the hand-crafted class features `[C, D]` of `template` (a constant
    buffer, rebuilt from the frozen CLIP with the model; checkpoints do not carry it) and the
    weight λ of the knowledge-guided term."""

    def __init__(self, clip_model, prompt_learner, text_encoder, template, classnames, weight):
        super().__init__(clip_model, prompt_learner, text_encoder)
        hard = encode_templates(text_encoder, text_encoder.token_embedding, [template], classnames)[0]
        self.register_buffer("hard_features", hard, persistent=False)
        self.template = template
        self.weight = weight

    def templates(self):
        return [self.template]

    def losses(self, image, label):
        # One encoding of the prompts serves both terms.
        text_features = self.compute_text_features()
        logits = self.similarity_logits(self.encode_image(image), text_features)
        terms = {
            "loss_ce": F.cross_entropy(logits.float(), label),
            "loss_kg": self.weight * knowledge_guided_loss(text_features, self.hard_features),
        }
        return terms, logits, None
