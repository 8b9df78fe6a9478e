"""ProGrad: Zhu, Niu, Han, Wu, Zhang. "Prompt-aligned Gradient for Prompt Tuning". ICCV 2023.

CoOp's prompt `[SOS] v1 .. vM CLASS . [EOS]`, trained with cross-entropy, whose update keeps
only the part of the cross-entropy gradient that does not conflict with zero-shot CLIP's
"general knowledge": per learnable tensor, with `G_d` the gradient of the cross-entropy and
`G_g` that of the KL divergence from zero-shot CLIP's prediction to the prompt's,

    G = G_d - lambda (G_d . G_g / |G_g|^2) G_g   where cos(G_d, G_g) < 0,   else G = G_d,

as the authors' code (BeierZhu/Prompt-align) computes it. The KL term is never added to the
loss: it only shapes the update (`gradient_guides`, `shape_gradient`; the trainer base takes
its gradient before the loss's backward).

Zero-shot CLIP's class weights are the features of one hand-crafted template, computed once;
its logits use the prompt model's own image features (the image tower is frozen and the same),
so a step encodes each image once.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..model import ContextSlots
from ..prompts import PromptAssembler
from ..templates import PromptForm, TemplateError, bpe, check_template
from ..text_encoder import encode_templates
from .coop import SoftPromptCLIP


def kl_to_teacher(student_logits, teacher_logits, temperature=1.0):
    """ProGrad's KL term, batch mean, in fp32: `T^2 * sum_c -p_t(c) log p_s(c)` with `p_t`, `p_s`
    the softmax of the teacher's and the student's logits over T. This is the cross-entropy
    the release logs; it differs from KL(p_t || p_s) by the teacher's entropy, a constant, so
    the two have the same gradient."""
    teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(teacher * log_student).sum(dim=-1).mean() * temperature**2


def project_conflicting(grad, guide, strength=1.0):
    """`grad` with `strength` times its component along `guide` removed when the two point
    apart (negative dot product), else `grad` unchanged (ProGrad's update of one tensor).

    A zero `guide` (or `grad`) leaves `grad` as it is: the release divides by the zero norm and
    its NaN cosine fails the test, so the result is the same without the NaN. A non-finite
    `guide` gives NaN, as the gradient of an overflowed term added to the loss would, so that
    fp16 gradient scaling skips the step. The result is linear in `grad` and does not depend
    on the scale of `guide`, so it may be applied to gradients that carry a loss scale.
    """
    norm = torch.linalg.vector_norm(guide)
    if not torch.isfinite(norm):
        return torch.full_like(grad, float("nan"))
    if norm == 0:
        return grad
    unit = guide / norm
    along = (grad * unit).sum()
    return grad - strength * along * unit if along < 0 else grad


def word_count_split(template, n_ctx):
    """(k, BPE ids) of ProGrad's initialisation phrase: `template` without " {}.", k its number
    of space-separated words; errors for a template the initialisation cannot use."""
    template = check_template(template, "ProGrad's template")
    if not template.endswith(" {}."):
        raise TemplateError(
            f"ProGrad's initialisation needs a template that ends with ' {{}}.' (the class name "
            f"last), not {template!r}: set TRAINER.PROGRAD.CTX_INIT False or choose another template"
        )
    phrase = template[: -len(" {}.")]
    words = len(phrase.split(" "))
    if words > n_ctx:
        raise TemplateError(
            f"ProGrad's template {template!r} has {words} words but TRAINER.PROGRAD.N_CTX is {n_ctx}: "
            "N_CTX must be at least the number of words"
        )
    return words, bpe(phrase)


def word_count_context(template, n_ctx, token_embedding):
    """ProGrad's initial context from `template` (its release, `CTX_INIT: True`): the template
    without " {}." is split at spaces into k words; the embeddings of its first k BPE tokens
    fill the LAST k of the `n_ctx` context vectors, the others start at zero; the phrase's
    remaining BPE tokens (one more token than words per comma: "pet," is "pet" ",") stay as
    fixed words between the context and the class name.

    Returns (PromptForm, initial table `[n_ctx, d]`).
    """
    words, ids = word_count_split(template, n_ctx)
    weight = token_embedding.weight
    table = torch.zeros(n_ctx, weight.shape[1])
    table[n_ctx - words :] = weight[torch.tensor(ids[:words], device=weight.device)].detach().float().cpu()
    return PromptForm(n_ctx, 0, ".", None, tuple(ids[words:])), table


class WordCountPrompt(nn.Module):
    """The prompt `[SOS] v1 .. vM <fixed words> CLASS . [EOS]` initialised from a template as
    ProGrad's release does (`word_count_context`); the interface of `coop.ContextPrompt`."""

    def __init__(self, template, n_ctx, classnames, token_embedding, truncate=True):
        super().__init__()
        self.template = template
        form, table = word_count_context(template, n_ctx, token_embedding)
        self.assembler = PromptAssembler([form], classnames, token_embedding, truncate=truncate)
        self.ctx = nn.Parameter(table)

    def forward(self):
        return self.assembler(self.ctx)

    def slots(self, classnames):
        return [ContextSlots("context", self.template, None, 0, self.assembler.forms[0])]


class ProGradCLIP(SoftPromptCLIP):
    """CoOp's model with zero-shot CLIP as the teacher of the KL term: the frozen features
    `[C, D]` of `template` for the classes (rebuilt with the model, never saved), the update's
    `strength` (lambda) and the KL's `temperature`."""

    gradient_guides = ("loss_kl",)

    def __init__(self, clip_model, prompt_learner, text_encoder, template, classnames, strength, temperature):
        super().__init__(clip_model, prompt_learner, text_encoder)
        teacher = encode_templates(text_encoder, clip_model.token_embedding, [template], classnames)[0]
        self.register_buffer("teacher_features", teacher, persistent=False)
        self.template = template
        self.strength = strength
        self.temperature = temperature

    def templates(self):
        return [self.template]

    def losses(self, image, label):
        image_features = self.encode_image(image)
        logits = self.similarity_logits(image_features, self.compute_text_features())
        teacher = self.similarity_logits(image_features, self.teacher_features)
        terms = {
            "loss_ce": F.cross_entropy(logits.float(), label),
            "loss_kl": kl_to_teacher(logits, teacher, self.temperature),
        }
        return terms, logits, None

    def shape_gradient(self, grad, guides):
        return project_conflicting(grad, guides["loss_kl"], self.strength)
