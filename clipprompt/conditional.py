"""CoCoOp's image-conditioned prompt (Zhou et al., CVPR 2022): the model pieces, without Dassl.

CoOp's M context vectors plus a small meta-net that maps the image feature to one token
`π(x)`, added to every context vector: the prompt of class c for image x is
`[SOS] v1+π(x) .. vM+π(x) CLASS . [EOS]`. The class text features therefore depend on the
image and cannot be cached; a batch of B images is encoded as B × C prompts in one call of
the truncated text encoder (its `chunk_size` bounds the memory).

As in the released code (KaiyangZhou/CoOp, trainers/cocoop.py), the meta-net reads the
L2-normalised image feature, Linear(D → D/16) → ReLU → Linear(D/16 → d_text). The trainer
(`trainers.cocoop`) and the exported classifier (`clipprompt.exported`) both build these.
"""

import torch.nn.functional as F
from torch import nn

from .model import ContextPrompt, PromptedCLIP


class MetaNet(nn.Sequential):
    """Linear(D → D/r) → ReLU → Linear(D/r → d_text): one context shift per image."""

    def __init__(self, image_dim, text_dim, reduction):
        if reduction < 1 or image_dim // reduction < 1:
            raise ValueError(
                f"TRAINER.COCOOP.META_NET_REDUCTION {reduction} does not fit image features of "
                f"width {image_dim}: choose a value from 1 to {image_dim}"
            )
        hidden = image_dim // reduction
        super().__init__(nn.Linear(image_dim, hidden), nn.ReLU(), nn.Linear(hidden, text_dim))


class ConditionalPrompt(ContextPrompt):
    """Context table `[M, d]` shifted per image: `forward(image_features)` → `[B, rows, L, d]`."""

    def __init__(self, classnames, clip_model, n_ctx, ctx_init, reduction, truncate=True):
        super().__init__(classnames, clip_model.token_embedding, n_ctx, ctx_init, truncate=truncate)
        text_dim = clip_model.token_embedding.weight.shape[1]
        self.meta_net = MetaNet(clip_model.visual.output_dim, text_dim, reduction)

    def forward(self, image_features):
        shift = self.meta_net(image_features)  # [B, d]
        return self.assembler(self.ctx + shift[:, None, :])


class ConditionalCLIP(PromptedCLIP):
    """Class features per image; trained with cross-entropy as CoOp."""

    def __init__(self, clip_model, prompt_learner, text_encoder):
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder

    def text_features(self, image_features):
        """Normalised class features per image, `[B, C, D]`, from one text-encoder call."""
        feats = self.text_encoder(*self.prompt_learner(image_features))  # one prompt set per image
        return F.normalize(feats.float(), dim=-1)

    def classify(self, image):
        return self.classify_features(self.encode_image(image))

    def classify_features(self, image_features):
        """`classify` from normalised image features `[B, D]`."""
        text_features = self.text_features(image_features)
        logits = (text_features @ image_features[:, :, None]).squeeze(-1)
        return self.logit_scale.exp() * logits, None
