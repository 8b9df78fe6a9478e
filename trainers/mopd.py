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

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.distillation import COMBINES, mopd_losses, teacher_logits
from clipprompt.hard_prompts import POOLS
from clipprompt.routing import Router, RoutingStats, topk_softmax
from clipprompt.templates import check_template
from clipprompt.text_encoder import encode_templates

from . import coop
from .prompt_trainer import PromptTrainer, model_prompts


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


class PromptLearner(coop.PromptLearner):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__(cfg, classnames, clip_model, cfg.TRAINER.MOPD)


class CustomCLIP(coop.CustomCLIP):
    """CoOp's model (the student) plus frozen teacher features `[H, C, D]` and the gate."""

    def __init__(self, prompt_learner, text_encoder, clip_model, teacher_features):
        super().__init__(prompt_learner, text_encoder, clip_model)
        num_teachers, _, dim = teacher_features.shape
        self.gate = Router(dim, num_teachers, bias=False, zero_init=True)
        # Rebuilt from the frozen CLIP and the config: never saved in checkpoints.
        self.register_buffer("teacher_features", teacher_features, persistent=False)

    def student_logits(self, image_features):
        return self.logit_scale.exp() * image_features @ self.text_features().t()

    def forward_train(self, image):
        """Student logits `[B, C]`, teacher logits `[B, H, C]` and gate scores `[B, H]`."""
        image_features = self.encode_image(image)
        teachers = teacher_logits(image_features, self.teacher_features, self.logit_scale.exp())
        return self.student_logits(image_features), teachers, self.gate(image_features)


@TRAINER_REGISTRY.register()
class MoPD(PromptTrainer):
    add_config = staticmethod(add_config)
    routing_stats_stem = "teacher_stats"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOPD
        # Resolved here so that a bad pool fails before the data are read.
        self.teacher_templates = teacher_pool(opts.POOL, model_prompts(cfg).TEACHER_TEMPLATES)
        num = len(self.teacher_templates)
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

    def build_model(self):
        opts = self.cfg.TRAINER.MOPD
        clip_model = self.load_clip()
        encoder = self.build_text_encoder(clip_model)
        templates = self.teacher_templates
        print(f"Teacher pool {opts.POOL!r}: {len(templates)} templates, top {opts.NUM_TEACHERS} per image")
        teacher_features = encode_templates(encoder, clip_model.token_embedding, templates, self.classnames)
        prompt_learner = PromptLearner(self.cfg, self.classnames, clip_model)
        self.model = CustomCLIP(prompt_learner, encoder, clip_model, teacher_features)
        self.register_learnable(self.model)
        self.routing_stats = RoutingStats(templates, opts.NUM_TEACHERS)

    def forward_backward(self, batch):
        opts = self.cfg.TRAINER.MOPD
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            student, teachers, scores = self.model.forward_train(image)
        losses, index, weights = mopd_losses(
            student,
            teachers,
            scores,
            label,
            opts.NUM_TEACHERS,
            opts.W,
            opts.W2,
            opts.DISTILL_TEMPERATURE,
            opts.TEACHER_COMBINE,
        )
        self.routing_stats.update(index, weights)
        return self.step(losses, student.float(), label)

    def model_inference(self, image):
        # The gate does not change the prediction; its choices are recorded for the statistics.
        with self.autocast():
            image_features = self.model.encode_image(image)
            logits = self.model.student_logits(image_features)
            scores = self.model.gate(image_features)
        self.routing_stats.update(*topk_softmax(scores.float(), self.cfg.TRAINER.MOPD.NUM_TEACHERS))
        return logits.float()
