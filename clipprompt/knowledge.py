"""KgCoOp's knowledge-guided term (Yao, Zhang, Xu, CVPR 2023).

The term keeps the text features of the learned prompts close to those of a hand-crafted
prompt, class by class: `1 - mean_c cos(w_c, w_c^clip)`, as the released code computes it
(htyao89/KgCoOp); the trainer multiplies it by λ (`TRAINER.KGCOOP.W`). The paper writes the
term as a mean squared Euclidean distance; for unit vectors ||a - b||² = 2 (1 - cos(a, b)),
so on normalised features the two forms differ only by a factor 2 absorbed in λ.
"""

import torch.nn.functional as F


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
