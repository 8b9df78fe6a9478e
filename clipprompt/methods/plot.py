"""PLOT: Chen, Yao, Song, Li, Rao, Zhang. "PLOT: Prompt Learning with Optimal Transport for
Vision-Language Models". ICLR 2023.

N soft prompts per class (CoOp's context, N tables of M vectors shared by all classes), matched
to the image's local features by entropic optimal transport. With normalised local features
f_m (m = 1..M, the image tower's local features) and prompt features g_{n,c}, the similarity
S[m, n] = <f_m, g_{n,c}> and the cost 1 - S; the Sinkhorn iterations (entropic weight eps,
uniform marginals 1/M and 1/N) give the transport plan T per image and class, without gradient;
the logit of class c is `s * sum_{m,n} T[m, n] S[m, n]` (s: CLIP's logit scale), trained with
cross-entropy, so the gradient reaches the prompts through S only. The authors' code
(CHENGY12/PLOT, plot-coop/trainers/plot.py) also adds, on ImageNet only, the global logit
`s * <v, normalize(mean_n g_{n,c})>` of the global image feature v and the mean of the
unnormalised prompt features (`global_logits`).

The Sinkhorn iterations run in fp32 whatever the precision of the towers, and stop at the first
iteration whose mean absolute change of the row scaling r (over every image and class of the
batch) is below `threshold`, or after `max_iter`, as released; the stopping rule is read on
the host every CHECK_EVERY iterations instead of every iteration, and the plan is taken from
the iteration where it first held, so the result is the released rule's.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..caching import CachedTextFeatures
from ..model import ContextSlots, PromptedCLIP, PromptWork, exported_kind
from ..prompts import PromptAssembler
from ..templates import PromptForm
from ..towers import encode_image

# Sinkhorn iterations between two reads of the stopping rule on the host (one synchronisation).
CHECK_EVERY = 10


@dataclass(frozen=True)
class TransportOptions:
    """TRAINER.PLOT's transport settings (trainers/plot.py documents each key)."""

    eps: float = 0.1
    max_iter: int = 100
    threshold: float = 1e-2
    global_logits: bool = False


@torch.no_grad()
def sinkhorn_plan(similarity, eps, max_iter, threshold):
    """The transport plans `[..., M, N]` (fp32) of similarities `[..., M, N]` between M local
    features and N prompts, with uniform marginals (module docstring)."""
    similarity = similarity.float()
    kernel = torch.exp(-(1.0 - similarity) / eps)
    m, n = similarity.shape[-2:]
    u = torch.full(similarity.shape[:-1], 1.0 / m, device=similarity.device)
    v = torch.full((*similarity.shape[:-2], n), 1.0 / n, device=similarity.device)
    kernel_t = kernel.transpose(-1, -2)
    r, c = torch.ones_like(u), torch.ones_like(v)
    done = 0
    while done < max_iter:
        steps = min(CHECK_EVERY, max_iter - done)
        history, changes = [], []
        for _ in range(steps):
            previous = r
            r = u / (kernel @ c[..., None]).squeeze(-1)
            c = v / (kernel_t @ r[..., None]).squeeze(-1)
            history.append((r, c))
            changes.append((r - previous).abs().mean())
        done += steps
        below = (torch.stack(changes) < threshold).nonzero()
        if len(below):
            r, c = history[int(below[0, 0])]
            break
    plan = r[..., :, None] * c[..., None, :] * kernel
    if not torch.isfinite(plan).all():
        raise FloatingPointError(
            "the Sinkhorn transport plan is not finite (inf/NaN in the image or prompt features): "
            "check the inputs, or the learning rate if the prompts diverged"
        )
    return plan


def transport_logits(local, prompts, scale, options):
    """`s * sum_{m,n} T S` `[B, C]` of normalised local features `[B, M, D]` and prompt features
    `[N, C, D]`, in fp32 (call it outside autocast), the plan T without gradient."""
    similarity = torch.einsum("bmd,ncd->bcmn", local.float(), prompts.float())
    plan = sinkhorn_plan(similarity, options.eps, options.max_iter, options.threshold)
    return scale * (plan * similarity).sum(dim=(-2, -1))


class TransportCLIP(PromptedCLIP):
    """Classification of an image's global and local features (`encode_image` gives them as
    `[B, 1 + M, D]`, the global one first) against N features per class by optimal transport.
    Its exported classifier (kind "optimal_transport") keeps the prompt features."""

    export_kind = "optimal_transport"

    def __init__(self, clip_model, options, scale=None):
        super().__init__(clip_model, scale)
        self.options = options

    def encode_image(self, image):
        """Normalised fp32 global and local image features `[B, 1 + M, D]`."""
        out = encode_image(self.image_encoder, image.to(self.dtype), local=True)
        return self.prepare_image_features(torch.cat([out.features[:, None], out.local], dim=1))

    def prompt_features(self):
        """(normalised prompt features `[N, C, D]`, normalised mean over the N prompts of the
        unnormalised features `[C, D]`), fp32."""
        raise NotImplementedError(f"{type(self).__name__} does not define prompt_features")

    def classify_features(self, image_features):
        prompts, pooled = self.prompt_features()
        # fp32 under every precision mode: the plan's kernel exp(-(1 - S) / eps) spans 2e-9 .. 1.
        with torch.autocast(image_features.device.type, enabled=False):
            logits = transport_logits(image_features[:, 1:], prompts, self.scale(), self.options)
            if self.options.global_logits:
                logits = logits + self.similarity_logits(image_features[:, 0].float(), pooled.float())
        return logits, None

    def export_tensors(self):
        prompts, pooled = self.prompt_features()
        return {"prompt_features": prompts, "pooled_features": pooled}

    def export_metadata(self):
        opts = self.options
        transport = {"eps": opts.eps, "max_iter": opts.max_iter, "threshold": opts.threshold}
        return {"transport": {**transport, "global_logits": opts.global_logits}}


@exported_kind
class FixedTransportCLIP(TransportCLIP):
    """Prompt features given once (an exported PLOT)."""

    def __init__(self, clip_model, prompts, pooled, options, scale=None):
        super().__init__(clip_model, options, scale)
        self.register_buffer("fixed_prompts", prompts)
        self.register_buffer("fixed_pooled", pooled)

    def prompt_features(self):
        return self.fixed_prompts, self.fixed_pooled

    @classmethod
    def export_shapes(cls, metadata, width):
        classes = len(metadata["classnames"])  # any number N of prompts per class
        return {"prompt_features": (None, classes, width), "pooled_features": (classes, width)}

    @classmethod
    def from_export(cls, clip_model, tensors, metadata, router):
        """The classifier of an exported file of kind "optimal_transport"."""
        opts = TransportOptions(**metadata["transport"])
        prompts, pooled = tensors["prompt_features"].float(), tensors["pooled_features"].float()
        return cls(clip_model, prompts, pooled, opts, tensors["logit_scale"])


class PromptSet(nn.Module):
    """N prompts `[SOS] v^n_1 .. v^n_M CLASS . [EOS]` per class, each with its own M context
    vectors shared by all classes, N(0, 0.02²); rows prompt-major (row n * C + c)."""

    def __init__(self, classnames, token_embedding, n_prompts, n_ctx, position="end", truncate=True):
        super().__init__()
        if n_prompts < 1:
            raise ValueError(f"TRAINER.PLOT.N must be at least 1 (prompts per class), not {n_prompts}")
        form = PromptForm.coop(n_ctx, "", position)
        self.n_prompts = n_prompts
        self.assembler = PromptAssembler([form] * n_prompts, classnames, token_embedding, truncate=truncate)
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self):
        return self.assembler(self.ctx)

    def slots(self):
        form = self.assembler.forms[0]
        return [ContextSlots(f"prompt {n}", None, None, n * form.n_ctx, form) for n in range(self.n_prompts)]


class PLOTCLIP(CachedTextFeatures, TransportCLIP):
    """PLOT's model: the N × C prompts encoded in one call of the (truncated, shared-prefix) text
    encoder; evaluation encodes them once."""

    def __init__(self, clip_model, prompt_learner, text_encoder, options):
        super().__init__(clip_model, options)
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder

    def compute_text_features(self):
        features = self.text_encoder(*self.prompt_learner()).float()
        features = features.view(self.prompt_learner.n_prompts, -1, features.shape[-1])
        return F.normalize(features, dim=-1), F.normalize(features.mean(dim=0), dim=-1)

    def prompt_features(self):
        return self.text_features()

    def prompt_work(self, batch, training=True):
        assembler = self.prompt_learner.assembler
        return PromptWork(
            assembler, self.text_encoder, None, 1, lambda image_features: self.compute_text_features()
        )

    def context_slots(self, classnames):
        return self.prompt_learner.ctx, self.prompt_learner.slots()
