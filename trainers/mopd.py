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

import json
import os.path as osp

import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from torch import nn
from yacs.config import CfgNode as CN

from clipprompt.caching import CachedTextFeatures
from clipprompt.distillation import COMBINES, mopd_losses, teacher_logits
from clipprompt.hard_prompts import POOLS
from clipprompt.prompts import PromptAssembler
from clipprompt.routing import Router, RoutingStats, topk_softmax
from clipprompt.templates import PromptForm, check_template, fill
from clipprompt.text_encoder import encode_texts

from .prompt_trainer import PromptTrainer, latest_checkpoint, read_checkpoint

STATS_STEM = "teacher_stats"


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
            raise ValueError(f"TRAINER.MOPD.POOL {pool!r}: unknown pool {name!r}; choose from {choices} (joined by '+')")
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


class PromptLearner(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        opts = cfg.TRAINER.MOPD
        form = PromptForm.coop(opts.N_CTX, opts.CTX_INIT, "end")
        self.assembler = PromptAssembler(
            [form], classnames, clip_model.token_embedding, truncate=cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
        )
        self.ctx = nn.Parameter(self.assembler.init_table())

    def forward(self):
        return self.assembler(self.ctx)


class CustomCLIP(CachedTextFeatures, nn.Module):
    """Student prompt, frozen teacher features `[H, C, D]` and the gate over the H teachers."""

    def __init__(self, prompt_learner, text_encoder, clip_model, teacher_features):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.text_encoder = text_encoder
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        num_teachers, _, dim = teacher_features.shape
        self.gate = Router(dim, num_teachers, bias=False, zero_init=True)
        # Rebuilt from the frozen CLIP and the config: never saved in checkpoints.
        self.register_buffer("teacher_features", teacher_features, persistent=False)

    def compute_text_features(self):
        return F.normalize(self.text_encoder(*self.prompt_learner()).float(), dim=-1)

    def encode_image(self, image):
        return F.normalize(self.image_encoder(image.to(self.dtype)).float(), dim=-1)

    def student_logits(self, image_features):
        return self.logit_scale.exp() * image_features @ self.text_features().t()

    def forward(self, image):
        return self.student_logits(self.encode_image(image))

    def forward_train(self, image):
        """Student logits `[B, C]`, teacher logits `[B, H, C]` and gate scores `[B, H]`."""
        image_features = self.encode_image(image)
        teachers = teacher_logits(image_features, self.teacher_features, self.logit_scale.exp())
        return self.student_logits(image_features), teachers, self.gate(image_features)


@TRAINER_REGISTRY.register()
class MoPD(PromptTrainer):
    add_config = staticmethod(add_config)

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MOPD
        # Resolved here so that a bad pool fails before the data are read.
        self.teacher_templates = teacher_pool(opts.POOL, cfg.DATASET.PROMPTS.TEACHER_TEMPLATES)
        num = len(self.teacher_templates)
        if not 1 <= opts.NUM_TEACHERS <= num:
            raise ValueError(f"TRAINER.MOPD.NUM_TEACHERS must be in 1..{num} (pool {opts.POOL!r}), not {opts.NUM_TEACHERS}")
        if opts.TEACHER_COMBINE not in COMBINES:
            raise ValueError(f"TRAINER.MOPD.TEACHER_COMBINE must be one of {COMBINES}, not {opts.TEACHER_COMBINE!r}")
        if not opts.DISTILL_TEMPERATURE > 0:
            raise ValueError(f"TRAINER.MOPD.DISTILL_TEMPERATURE must be positive, not {opts.DISTILL_TEMPERATURE}")
        if not 0 <= opts.W <= 1 or opts.W2 < 0:
            raise ValueError(f"TRAINER.MOPD.W must be in [0, 1] and W2 >= 0 (got W {opts.W}, W2 {opts.W2})")

    def build_model(self):
        opts = self.cfg.TRAINER.MOPD
        clip_model = self.load_clip().to(self.device)
        encoder = self.build_text_encoder(clip_model)
        templates = self.teacher_templates
        print(f"Teacher pool {opts.POOL!r}: {len(templates)} templates, top {opts.NUM_TEACHERS} per image")
        texts = [fill(t, c) for t in templates for c in self.classnames]
        teacher_features = encode_texts(encoder, clip_model.token_embedding, texts)
        teacher_features = teacher_features.view(len(templates), len(self.classnames), -1)
        prompt_learner = PromptLearner(self.cfg, self.classnames, clip_model)
        self.model = CustomCLIP(prompt_learner, encoder, clip_model, teacher_features)
        self.register_learnable(self.model)
        self.teacher_stats = RoutingStats(templates, opts.NUM_TEACHERS)
        # Epoch of the model an evaluation's statistics describe: the loaded checkpoint's,
        # else the current training epoch, else 0 (the untrained initial model).
        self.loaded_epoch = None
        self.training_started = False

    def forward_backward(self, batch):
        opts = self.cfg.TRAINER.MOPD
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            student, teachers, scores = self.model.forward_train(image)
        losses, index, weights = mopd_losses(
            student, teachers, scores, label, opts.NUM_TEACHERS, opts.W, opts.W2,
            opts.DISTILL_TEMPERATURE, opts.TEACHER_COMBINE,
        )
        self.teacher_stats.update(index, weights)
        return self.step(losses, student.float(), label)

    # ------------------------------------------------------------------ gate statistics

    def before_train(self):
        super().before_train()
        self.training_started = True
        # Keep the records of the epochs a resumed run has already finished.
        self.teacher_stats.restore(self.output_dir, STATS_STEM, self.start_epoch)

    def before_epoch(self):
        self.teacher_stats.reset()

    def after_epoch(self):
        self.close_stats(self.epoch + 1, "train")
        super().after_epoch()

    def close_stats(self, epoch, split, show=True):
        record = self.teacher_stats.close(epoch, split)
        if record is not None:
            if show:
                print(self.teacher_stats.summary(record))
            self.teacher_stats.write(self.output_dir, STATS_STEM)

    def model_inference(self, image):
        # The gate does not change the prediction; its choices are recorded for the statistics.
        with self.autocast():
            image_features = self.model.encode_image(image)
            logits = self.model.student_logits(image_features)
            scores = self.model.gate(image_features)
        self.teacher_stats.update(*topk_softmax(scores.float(), self.cfg.TRAINER.MOPD.NUM_TEACHERS))
        return logits.float()

    @torch.no_grad()
    def test(self, split=None):
        split = split or self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is None:
            split = "test"  # as Dassl does
        self.teacher_stats.reset()
        result = super().test(split)
        if self.loaded_epoch is not None:
            epoch = self.loaded_epoch
        else:
            epoch = self.epoch + 1 if self.training_started else 0
        # Written to the files only, so that a log still ends with its result block.
        self.close_stats(epoch, split, show=False)
        return result

    def load_model(self, directory, epoch=None):
        super().load_model(directory, epoch)
        if not directory:
            return
        folder = osp.join(directory, self.get_model_names()[0])
        path = latest_checkpoint(folder) if epoch is None else osp.join(folder, f"model.pth.tar-{epoch}")
        self.loaded_epoch = read_checkpoint(path)["epoch"]
        # Gate output h is teacher h of the pool the model was trained with; a cross-dataset
        # evaluation configures the target's pool, so the statistics take the trained names.
        trained = osp.join(directory, f"{STATS_STEM}.json")
        if osp.exists(trained):
            with open(trained) as f:
                names = json.load(f)["names"]
            if names != self.teacher_stats.names and len(names) == len(self.teacher_stats.names):
                print(f"Gate statistics use the teacher names of the trained model ({trained})")
                self.teacher_stats = RoutingStats(names, self.teacher_stats.top_k)
