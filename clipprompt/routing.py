"""Top-k routing over experts or teachers.

MoCoOp's router and MoPD's gate both score G candidates per image from the normalised
image feature, keep the top k scores and renormalise them with a softmax over the kept ones.
"""

import torch.nn.functional as F
from torch import nn


def topk_softmax(scores, k):
    """(indices [B, k], weights [B, k]): the k largest scores and their softmax."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"top-k needs 1 <= k <= {scores.shape[-1]} candidates, got k = {k}")
    top, index = scores.topk(k, dim=-1)
    return index, top.softmax(dim=-1)


def gather_selected(per_candidate, index):
    """The rows `[B, k, C]` of `per_candidate` `[B, G, C]` at each image's selected `index` `[B, k]`."""
    return per_candidate.gather(1, index.unsqueeze(-1).expand(-1, -1, per_candidate.shape[-1]))


class Router(nn.Module):
    """Linear scores of G candidates from the normalised image feature.

    MoCoOp: `bias=True` with PyTorch's default initialisation. MoPD's gate: `bias=False`,
    zero-initialised, so every teacher starts with the same score.
    """

    def __init__(self, dim, num_candidates, bias=True, zero_init=False):
        super().__init__()
        self.linear = nn.Linear(dim, num_candidates, bias=bias)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            if bias:
                nn.init.zeros_(self.linear.bias)

    def forward(self, image_features):
        image_features = F.normalize(image_features.float(), dim=-1)
        return self.linear(image_features.to(self.linear.weight.dtype))
