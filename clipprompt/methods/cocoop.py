"""CoCoOp: Zhou, Yang, Loy, Liu. "Conditional Prompt Learning for Vision-Language Models". CVPR 2022.

CoOp's M context vectors plus a small meta-net that maps the image feature to one token
`π(x)`, added to every context vector: the prompt of class c for image x is
`[SOS] v1+π(x) .. vM+π(x) CLASS . [EOS]`. The class text features therefore depend on the
image and cannot be cached; a batch of B images is encoded as B × C prompts in one call of
the truncated text encoder (its `chunk_size` bounds the memory).

As in the released code (KaiyangZhou/CoOp, trainers/cocoop.py), the meta-net reads the
L2-normalised image feature, Linear(D → D/16) → ReLU → Linear(D/16 → d_text). An exported
classifier (kind "conditional") keeps the context, the meta-net and the prompt layout, and
encodes every image's prompts with CLIP's text tower, as here.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..learnable import load_learnable
from ..model import PromptedCLIP, PromptWork, exported_kind
from ..text_encoder import TextEncoder
from ..towers import text_tower
from .coop import ContextPrompt


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
        self.reduction = reduction


class ConditionalPrompt(ContextPrompt):
    """Context table `[M, d]` shifted per image: `forward(image_features)` → `[B, rows, L, d]`."""

    def __init__(self, classnames, clip_model, n_ctx, ctx_init, reduction, truncate=True):
        tower = text_tower(clip_model)
        super().__init__(
            classnames, tower.token_embedding, n_ctx, ctx_init, truncate=truncate, tokenizer=tower.tokenizer
        )
        text_dim = tower.token_embedding.weight.shape[1]
        self.meta_net = MetaNet(tower.embed_dim, text_dim, reduction)

    def forward(self, image_features):
        shift = self.meta_net(image_features)  # [B, d]
        return self.assembler(self.ctx + shift[:, None, :])


@exported_kind
class ConditionalCLIP(PromptedCLIP):
    """Class features per image; trained with cross-entropy as CoOp."""

    export_kind = "conditional"

    def __init__(self, clip_model, prompt_learner, text_encoder):
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder

    def text_features(self, image_features):
        """Normalised class features per image, `[B, C, D]`, from one text-encoder call."""
        feats = self.text_encoder(*self.prompt_learner(image_features))  # one prompt set per image
        return F.normalize(feats.float(), dim=-1)

    def classify_features(self, image_features):
        text_features = self.text_features(image_features)
        logits = (text_features @ image_features[:, :, None]).squeeze(-1)
        return self.add_bias(self.scale() * logits), None

    def prompt_work(self, batch, training=True):
        return PromptWork(self.prompt_learner.assembler, self.text_encoder, None, batch, self.text_features)

    def context_slots(self, classnames):
        return self.prompt_learner.ctx, self.prompt_learner.slots(classnames)

    def interpretation_note(self):
        return "static context: the meta-net adds an image-dependent shift to every vector at inference"

    def export_tensors(self):
        assembler = self.prompt_learner.assembler
        return {"prompt.token_ids": assembler.token_ids, "prompt.slot_ids": assembler.slot_ids}

    def export_metadata(self):
        encoder = self.text_encoder
        return {
            "prompt": {
                "n_ctx": self.prompt_learner.ctx.shape[0],
                "meta_net_reduction": self.prompt_learner.meta_net.reduction,
            },
            "text_encoder": {
                "attention": encoder.attention,
                "chunk_size": encoder.chunk_size,
                "truncate": encoder.truncate,
                "share_prefix": encoder.share_prefix,
            },
        }

    @classmethod
    def export_shapes(cls, metadata, width):
        rows = len(metadata["classnames"])
        return {"prompt.token_ids": (rows, None), "prompt.slot_ids": (rows, None)}

    @classmethod
    def from_export(cls, clip_model, tensors, metadata, router):
        """The model of an exported file of kind "conditional": its prompt rebuilt for the
        exported classes (layout checked against the exported one), its learned tensors loaded."""
        from ..exported import LEARNED, ExportError

        opts, encoder = metadata["prompt"], metadata["text_encoder"]
        with torch.random.fork_rng():  # initial values, replaced below; the caller's RNG is left alone
            prompt = ConditionalPrompt(
                metadata["classnames"],
                clip_model,
                opts["n_ctx"],
                "",
                opts["meta_net_reduction"],
                encoder["truncate"],
            )
        for name in ("token_ids", "slot_ids"):
            if not torch.equal(getattr(prompt.assembler, name), tensors[f"prompt.{name}"]):
                raise ExportError(
                    f"the prompt layout ({name}) rebuilt here differs from the exported one: "
                    "this clip tokenizer splits the class names differently from the one used at export"
                )
        text_encoder = TextEncoder(
            clip_model,
            encoder["attention"],
            encoder["chunk_size"],
            False,
            encoder["truncate"],
            encoder["share_prefix"],
        )
        model = cls(clip_model, prompt, text_encoder)
        learned = {k[len(LEARNED) :]: v for k, v in tensors.items() if k.startswith(LEARNED)}
        load_learnable(
            model,
            {k: v for k, v in learned.items() if not k.startswith("image_encoder.")},
            "the exported file",
        )
        return model
