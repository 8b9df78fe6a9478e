"""MoPD: Chen, Fu, Zhang. "MoPD: Mixture-of-Prompts Distillation for Vision-Language Models".
IEEE Transactions on Multimedia 2025 (arXiv 2412.19087).

The student is CoOp's soft prompt (4 context vectors from "a photo of a", class name at the
end). A pool of H hand-crafted templates serves as teachers: their text features are computed
once. A bias-free, zero-initialised gate scores the teachers from the image feature, keeps the
top T per image and softmaxes over them. The loss is
`W CE(l_s, y) + (1 - W) L_mpd + W2 L_mps` (`clipprompt.distillation`): the distillation term
pulls the student towards the selected teachers, the selection term moves the gate towards
teachers that are right on the true label. Inference uses the student prompt only.
"""

from dataclasses import dataclass

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.distillation import COMBINES, mopd_losses, teacher_logits
from clipprompt.hard_prompts import POOLS
from clipprompt.model import Routing, SoftPromptCLIP
from clipprompt.routing import Router, topk_softmax
from clipprompt.templates import check_template
from clipprompt.text_encoder import encode_templates

from .config import model_prompts
from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.MOPD = CN()
    # Weight W of the student's cross-entropy; the distillation loss L_mpd gets 1 - W.
    cfg.TRAINER.MOPD.W = 0.8
    # Weight W2 of the selection loss L_mps (it trains the gate only).
    cfg.TRAINER.MOPD.W2 = 0.1
    # Number T of teachers the gate keeps per image (top-T, softmax over the kept scores).
    cfg.TRAINER.MOPD.NUM_TEACHERS = 2
    # Teacher templates: "task" (DATASET.PROMPTS.TEACHER_TEMPLATES), a shared pool of
    # clipprompt.hard_prompts.POOLS ("lasp", "noisy", ...), or several joined by "+"
    # ("task+noisy"), concatenated in that order.
    cfg.TRAINER.MOPD.POOL = "task"
    # weighted_kl: sum_h w_h KL(p_h || p_s); mixture: KL(sum_h w_h p_h || p_s). Same student
    # gradient, different gate gradient.
    cfg.TRAINER.MOPD.TEACHER_COMBINE = "weighted_kl"
    # Temperature Tkd of the distillation softmaxes (the loss is scaled by Tkd^2).
    cfg.TRAINER.MOPD.DISTILL_TEMPERATURE = 1.0
    # Number of learnable context vectors of the student, all before the class name.
    cfg.TRAINER.MOPD.N_CTX = 4
    # Words initialising the student context ("" = random N(0, 0.02^2)); N_CTX BPE tokens.
    cfg.TRAINER.MOPD.CTX_INIT = "a photo of a"


def teacher_pool(pool, task_templates):
    """The teacher templates named by TRAINER.MOPD.POOL, validated, in pool order."""
    choices = ["task", *POOLS]
    names = [name.strip() for name in str(pool).split("+")]
    if not pool or not all(names):
        raise ValueError(
            f"TRAINER.MOPD.POOL {pool!r} names no teacher pool: use one of {choices} or several "
            "joined by '+', e.g. 'task+noisy'"
        )
    templates = []
    for name in names:
        if name not in choices:
            raise ValueError(
                f"TRAINER.MOPD.POOL {pool!r}: unknown pool {name!r}; choose from {choices} (joined by '+')"
            )
        if names.count(name) > 1:
            raise ValueError(f"TRAINER.MOPD.POOL {pool!r} names the pool {name!r} twice")
        if name == "task":
            if not task_templates:
                raise ValueError(
                    "TRAINER.MOPD.POOL uses 'task' but DATASET.PROMPTS.TEACHER_TEMPLATES is empty: "
                    "pass the dataset config (configs/datasets/<dataset>.yaml) or choose another pool"
                )
            where = "DATASET.PROMPTS.TEACHER_TEMPLATES"
            templates += [check_template(t, f"{where}[{i}]") for i, t in enumerate(task_templates)]
        else:
            templates += [check_template(t, f"POOLS[{name!r}][{i}]") for i, t in enumerate(POOLS[name])]
    return templates


@dataclass(frozen=True)
class DistillationOptions:
    """TRAINER.MOPD's loss settings, as the model uses them."""

    num_teachers: int  # T, teachers kept per image
    w: float  # weight of the student's cross-entropy; the distillation term gets 1 - w
    w2: float  # weight of the selection term
    temperature: float  # Tkd
    combine: str  # weighted_kl | mixture

    @classmethod
    def from_cfg(cls, opts):
        return cls(opts.NUM_TEACHERS, opts.W, opts.W2, opts.DISTILL_TEMPERATURE, opts.TEACHER_COMBINE)


class DistilledCLIP(SoftPromptCLIP):
    """CoOp's model (the student) plus frozen teacher features `[H, C, D]` and the gate."""

    def __init__(
        self, clip_model, prompt_learner, text_encoder, teacher_templates, teacher_features, options
    ):
        super().__init__(clip_model, prompt_learner, text_encoder)
        num_teachers, _, dim = teacher_features.shape
        self.gate = Router(dim, num_teachers, bias=False, zero_init=True)
        # Rebuilt from the frozen CLIP and the config: never saved in checkpoints.
        self.register_buffer("teacher_features", teacher_features, persistent=False)
        self.options = options
        self.routing_names = tuple(teacher_templates)
        self.top_k = options.num_teachers

    def losses(self, image, label):
        opts = self.options
        image_features = self.encode_image(image)
        student = self.similarity_logits(image_features, self.text_features())
        teachers = teacher_logits(image_features, self.teacher_features, self.logit_scale.exp())
        terms, index, weights = mopd_losses(
            student,
            teachers,
            self.gate(image_features),
            label,
            opts.num_teachers,
            opts.w,
            opts.w2,
            opts.temperature,
            opts.combine,
        )
        return terms, student, Routing(index, weights)

    def classify(self, image):
        """The student's logits; the gate does not change the prediction, its choice is
        returned for the routing statistics."""
        image_features = self.encode_image(image)
        logits = self.similarity_logits(image_features, self.text_features())
        return logits, Routing(*topk_softmax(self.gate(image_features).float(), self.options.num_teachers))


@TRAINER_REGISTRY.register()
class MoPD(PromptTrainer):
    add_config = staticmethod(add_config)
    routing_stats_stem = "teacher_stats"
    identity_keys = ("TRAINER.MOPD.N_CTX", "TRAINER.MOPD.POOL")

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOPD
        num = len(teacher_pool(opts.POOL, model_prompts(cfg).TEACHER_TEMPLATES))
        if not 1 <= opts.NUM_TEACHERS <= num:
            raise ValueError(
                f"TRAINER.MOPD.NUM_TEACHERS must be in 1..{num} (pool {opts.POOL!r}), not {opts.NUM_TEACHERS}"
            )
        if opts.TEACHER_COMBINE not in COMBINES:
            raise ValueError(
                f"TRAINER.MOPD.TEACHER_COMBINE must be one of {COMBINES}, not {opts.TEACHER_COMBINE!r}"
            )
        if not opts.DISTILL_TEMPERATURE > 0:
            raise ValueError(
                f"TRAINER.MOPD.DISTILL_TEMPERATURE must be positive, not {opts.DISTILL_TEMPERATURE}"
            )
        if not 0 <= opts.W <= 1 or opts.W2 < 0:
            raise ValueError(f"TRAINER.MOPD.W must be in [0, 1] and W2 >= 0 (got W {opts.W}, W2 {opts.W2})")

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.MOPD
        templates = teacher_pool(opts.POOL, model_prompts(self.cfg).TEACHER_TEMPLATES)
        encoder = self.build_text_encoder(clip_model)
        print(f"Teacher pool {opts.POOL!r}: {len(templates)} templates, top {opts.NUM_TEACHERS} per image")
        teacher_features = encode_templates(encoder, clip_model.token_embedding, templates, self.classnames)
        prompt = self.context_prompt(clip_model, opts)
        options = DistillationOptions.from_cfg(opts)
        return DistilledCLIP(clip_model, prompt, encoder, templates, teacher_features, options)
