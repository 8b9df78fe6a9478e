"""Base class of every trainer in this repository: Dassl's TrainerX, fixed for today's stack.

Dassl (c61a1b5, used unmodified) gives the data manager, the evaluator, the optimisers and the
registry; this class and `trainers.loop` (the epoch and evaluation loop) give the rest:
- learning rate: `EpochLRSchedule` (Dassl's per-epoch values after its warm-up) instead of
  Dassl's warm-up scheduler, which raises a TypeError on torch >= 2.2 and pickles itself;
- checkpoints (`trainers.runs.checkpoints`): learnable tensors, the model's declared training
  state, plain optimiser, schedule, scaler and RNG states (`torch.load(weights_only=True)` reads
  them), written atomically, with the identity of the model (`trainers.runs.identity`), so
  resume is exact in every precision and a checkpoint of another model is refused (base -> new
  stays allowed);
- `load_model` never formats Dassl's `val_result` (None under `TEST.FINAL_MODEL last_step`)
  and, when no epoch is given, loads the newest checkpoint of a finished run (or
  `model-best.pth.tar` under `TEST.FINAL_MODEL best_val`);
- precision `fp32 | fp16 | amp` with every loss term kept: the loss terms are computed by the
  same code in every mode, only the autocast context and gradient scaling differ; steps that
  fp16 loss scaling skips (inf/NaN gradients) are logged ("skipped" in the epoch line);
- images are read by `clipprompt.images` (Dassl's data manager over `datasets.loading`'s
  wrapper), which scales 16-bit and float images instead of reading them as white or black;
- training and evaluation are generic: every model speaks `clipprompt.model`'s interface
  (`losses`, `classify`), so a trainer only declares its config keys and builds its model
  (`make_model`); routing statistics are kept for every model that routes.
"""

import copy
import os.path as osp
from contextlib import nullcontext

import torch
from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_optimizer
from yacs.config import CfgNode as CN

from clipprompt.clip_loading import backbone_fingerprint, load_clip
from clipprompt.learnable import learnable_parameters
from clipprompt.methods.coop import ContextPrompt
from clipprompt.open_clip_backbone import architecture, pretrained_normalization
from clipprompt.templates import check_template
from clipprompt.text_encoder import TextEncoder, check_speed_options
from clipprompt.towers import image_resolution, text_tower
from clipprompt.vocabulary import unlearnt_words_warning
from datasets.loading import build_data_manager
from trainers.runs.checkpoints import (
    load_for_evaluation,
    resume_training,
    save_checkpoint,
    training_state,
)
from trainers.runs.identity import config_values, make_identity
from trainers.runs.routing_stats import RoutingStats
from trainers.runs.schedule import EpochLRSchedule

from .loop import TrainingLoop

PRECISIONS = ("fp32", "fp16", "amp")


class PromptTrainer(TrainingLoop, TrainerX):
    """Shared machinery; a subclass declares `add_config` and implements `make_model`."""

    # Subclasses set this to their own `add_config(cfg)`; `make_cfg` calls it before merging files.
    add_config = None
    # Config keys that define the learnable tensors (their shapes or what they mean), recorded
    # in every checkpoint and compared when it is loaded (trainers.runs.identity).
    identity_keys = ()
    # The rows `python -m tools.benchmark` measures for this trainer: (row name, trainer config as
    # the protocol scripts name it, whether to compare every text-encoder path) each.
    benchmark_rows = ()

    def __init__(self, cfg, classnames=None, all_classnames=None, clip_model=None):
        """Dassl builds a trainer as `Trainer(cfg)`, reading the data; `trainers.build_trainer`
        passes `classnames` (and optionally `all_classnames`, `clip_model`) to build it without."""
        self.finished_epochs = 0  # training epochs behind the current model (0: untrained)
        self.routing_stats = None
        self._class_lists = None
        if classnames is not None:
            names = list(classnames)
            self._class_lists = (names, list(all_classnames) if all_classnames is not None else names)
        self._shared_clip = clip_model
        super().__init__(cfg)

    @classmethod
    def check_cfg(cls, cfg):
        """Validate the config (no side effects); `make_cfg` and Dassl both call it."""
        if cfg.TRAINER.PREC not in PRECISIONS:
            raise ValueError(f"TRAINER.PREC must be one of {PRECISIONS}, not {cfg.TRAINER.PREC!r}")
        if cfg.TRAINER.AMP_DTYPE not in ("auto", "bfloat16", "float16"):
            raise ValueError(
                f"TRAINER.AMP_DTYPE must be auto, bfloat16 or float16, not {cfg.TRAINER.AMP_DTYPE!r}"
            )
        for name, node in cfg.TRAINER.items():  # every context length is a TRAINER.<NAME>.N_CTX
            if isinstance(node, CN) and node.get("N_CTX", 1) < 1:
                raise ValueError(
                    f"TRAINER.{name}.N_CTX must be at least 1 (learnable context vectors), not {node.N_CTX}"
                )

    # ------------------------------------------------------------------ data

    def build_data_loader(self):
        if self._class_lists is None:  # Dassl's, with images read by clipprompt.images
            dm = self.dm = build_data_manager(self.cfg)
            self.train_loader_x, self.train_loader_u = dm.train_loader_x, dm.train_loader_u
            self.val_loader, self.test_loader = dm.val_loader, dm.test_loader
            self.num_classes, self.num_source_domains = dm.num_classes, dm.num_source_domains
            self.lab2cname = dm.lab2cname
            return
        names = self._class_lists[0]
        self.dm = None
        self.train_loader_x = self.train_loader_u = self.val_loader = self.test_loader = None
        self.num_classes, self.num_source_domains = len(names), 1
        self.lab2cname = dict(enumerate(names))

    @property
    def classnames(self):
        """Class names of this run's classes, in label order."""
        if self._class_lists is not None:
            return self._class_lists[0]
        return self.dm.dataset.classnames

    @property
    def all_classnames(self):
        """Every class name of the dataset (base + new), in label order."""
        if self._class_lists is not None:
            return self._class_lists[1]
        return getattr(self.dm.dataset, "all_classnames", self.dm.dataset.classnames)

    def dataset_template(self, key="TEMPLATE"):
        return check_template(self.cfg.DATASET.PROMPTS[key], f"DATASET.PROMPTS.{key}")

    # ------------------------------------------------------------------ model

    def make_model(self, clip_model):
        """The model (`clipprompt.model.PromptedCLIP`) over `clip_model`, for `self.classnames`."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_model(clip_model)")

    def trains_clip_weights(self):
        """True when the model makes weights of CLIP itself learnable (a shared CLIP is copied)."""
        return False

    def class_specific_tensors(self):
        """True when learnable tensors belong to particular classes (CoOp's CSC): a checkpoint
        then loads only into a model of the same class names."""
        return False

    def param_groups(self):
        """Optimiser parameter groups (Dassl/torch format), or None for one group of every
        learnable tensor."""

    def build_model(self):
        clip_model = self.load_clip()
        opts = self.cfg.TRAINER.TEXT_ENCODER
        keys = ("TRAINER.TEXT_ENCODER.TRUNCATE", "TRAINER.TEXT_ENCODER.SHARE_PREFIX")
        check_speed_options(text_tower(clip_model), opts.TRUNCATE, opts.SHARE_PREFIX, keys)
        self.model = self.make_model(clip_model)
        self.register_learnable(self.model, param_groups=self.param_groups())
        if self.model.routing_names:
            self.routing_stats = RoutingStats(self.model.routing_names, self.model.top_k, self.classnames)

    @property
    def routing_stats_stem(self):
        """File name (without extension) of the routing statistics: `expert_stats` (MoCoOp),
        `teacher_stats` (MoPD), from what the model routes to."""
        return f"{self.model.routing_kind}_stats"

    def load_clip(self):
        """The frozen CLIP of MODEL.BACKBONE.NAME on the device, in the dtype PREC asks for.

        On the device before any prompt learner is built: the prompt assemblers keep a
        reference to CLIP's token embedding outside their module tree."""
        cfg, backbone = self.cfg, self.cfg.MODEL.BACKBONE
        if self._shared_clip is not None:
            model = copy.deepcopy(self._shared_clip) if self.trains_clip_weights() else self._shared_clip
        else:
            dtype = torch.float16 if cfg.TRAINER.PREC == "fp16" else torch.float32
            weights = f", {backbone.WEIGHTS}" if backbone.WEIGHTS else ""
            print(f"Loading CLIP ({backbone.NAME}{weights})")
            model = load_clip(
                backbone.NAME, backbone.DOWNLOAD_ROOT, dtype, backbone.WEIGHTS, backbone.MODEL_CONFIG
            )
        # Before any CLIP weight is trained (MoCoOp's release preset trains LayerNorms).
        self.backbone_fingerprint = backbone_fingerprint(model)
        self.backbone_architecture = architecture(model)  # open_clip's model config, for exports
        if not str(backbone.NAME).startswith("open_clip:"):  # the check reads CLIP's BPE vocabulary
            warning = unlearnt_words_warning(
                model.token_embedding, [*self.classnames, *self.all_classnames], backbone.NAME
            )
            if warning:
                print(warning)
        check_input(cfg, model)
        return model.to(self.device)

    def context_prompt(self, clip_model, opts):
        """CoOp's context prompt over this run's classes from a trainer's config node: N_CTX,
        CTX_INIT, and CoOp's CLASS_TOKEN_POSITION and CSC where the trainer declares them."""
        position, class_specific = opts.get("CLASS_TOKEN_POSITION", "end"), opts.get("CSC", False)
        truncate = self.cfg.TRAINER.TEXT_ENCODER.TRUNCATE
        tower = text_tower(clip_model)
        return ContextPrompt(
            self.classnames,
            tower.token_embedding,
            opts.N_CTX,
            opts.CTX_INIT,
            position,
            class_specific,
            truncate,
            tower.tokenizer,
        )

    def build_text_encoder(self, clip_model):
        opts = self.cfg.TRAINER.TEXT_ENCODER
        return TextEncoder(
            clip_model, opts.ATTENTION, opts.CHUNK_SIZE, opts.CHECKPOINT, opts.TRUNCATE, opts.SHARE_PREFIX
        )

    def register_learnable(self, model, name="prompt_learner", param_groups=None):
        """Move `model` to the device and optimise its tensors that require grad.

        `param_groups` (Dassl/torch format) overrides the single default group, e.g. to give
        some tensors a different learning rate.
        """
        model.to(self.device)
        learnable = learnable_parameters(model)
        print(
            f"Learnable tensors ({sum(p.numel() for p in learnable.values()):,} values): {', '.join(learnable)}"
        )
        self.optim = self.sched = None
        if learnable:
            groups = param_groups if param_groups is not None else list(learnable.values())
            self.optim = build_optimizer(None, self.cfg.OPTIM, param_groups=groups)
            opt = self.cfg.OPTIM
            warmup_lr = opt.WARMUP_CONS_LR if opt.WARMUP_TYPE == "constant" else opt.WARMUP_MIN_LR
            self.sched = EpochLRSchedule(
                self.optim,
                opt.MAX_EPOCH,
                opt.WARMUP_EPOCH,
                opt.WARMUP_TYPE,
                warmup_lr,
                opt.WARMUP_RECOUNT,
                opt.LR_SCHEDULER,
                opt.STEPSIZE,
                opt.GAMMA,
            )
        self.register_model(name, model, self.optim, self.sched)
        amp_fp16 = self.cfg.TRAINER.PREC == "amp" and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_fp16 and learnable else None

    @property
    def amp_dtype(self):
        choice = self.cfg.TRAINER.AMP_DTYPE
        if choice == "auto":
            cpu_or_bf16 = self.device.type != "cuda" or torch.cuda.is_bf16_supported()
            return torch.bfloat16 if cpu_or_bf16 else torch.float16
        return getattr(torch, choice)

    def autocast(self):
        if self.cfg.TRAINER.PREC != "amp":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ training

    def set_model_mode(self, mode="train", names=None):
        """Dassl's, except that frozen parts of CLIP stay in eval mode while training, so a
        ResNet image tower keeps its BatchNorm statistics (as CoOp, which registers only the
        prompt learner)."""
        super().set_model_mode(mode, names)
        if mode == "train":
            for name in self.get_model_names(names):
                for module in self._models[name].modules():
                    if not any(p.requires_grad for p in module.parameters()):
                        module.eval()

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            terms, logits, routing = self.model.losses(image, label)
        self.record_routing(routing)
        return self.step(terms, logits, label)

    def model_inference(self, image, labels=None):
        """Evaluation logits (fp32) of a batch; `labels` (evaluation passes them) count the
        routing per class."""
        with self.autocast():
            logits, routing = self.model.classify(image)
        self.record_routing(routing, labels)
        return logits.float()

    def record_routing(self, routing, labels=None):
        if routing is not None and self.routing_stats is not None:
            self.routing_stats.update(routing.index, routing.weight, labels)

    def step(self, losses, logits=None, label=None):
        """Backward the sum of the weighted loss terms, update, and return the log summary.

        `losses` maps names to already weighted scalar terms; all of them are summed in every
        precision mode, except the model's `gradient_guides`, whose gradients only shape the
        update (`shape_gradient`, on the gradients as scaled for backward, before they are
        unscaled and clipped). The learning rate advances after the last batch of an epoch.
        """
        guides = {name: losses[name].float() for name in self.model.gradient_guides}
        loss = sum(term.float() for name, term in losses.items() if name not in guides)
        for term in (loss, *guides.values()):
            self.detect_anomaly(term)
        self.model_zero_grad()
        params = [p for group in self.optim.param_groups for p in group["params"]]
        guide_grads = self.guide_gradients(guides, params)
        self.scaled(loss).backward()
        if guide_grads:
            for i, p in enumerate(params):
                if p.grad is not None:
                    p.grad = self.model.shape_gradient(p.grad, {n: g[i] for n, g in guide_grads.items()})
        if self.scaler is not None:
            self.scaler.unscale_(self.optim)
        if self.cfg.TRAINER.GRAD_CLIP_NORM > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.TRAINER.GRAD_CLIP_NORM)
        summary = {"loss": loss.item()}
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optim)  # skipped when a gradient is inf/NaN
            self.scaler.update()  # which then lowers the scale
            summary["skipped"] = float(self.scaler.get_scale() < scale)
        else:
            self.model_update()

        if len(losses) > 1:
            summary.update({name: term.item() for name, term in losses.items()})
        if logits is not None:
            summary["acc"] = compute_accuracy(logits, label)[0].item()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def scaled(self, loss):
        """`loss` as backward sees it: times the gradient scale with fp16 gradient scaling."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def guide_gradients(self, guides, params):
        """{term: [gradient of each of `params`]} of the guide terms, scaled as the loss is;
        computed before the loss's backward frees the graph they share (zeros for a tensor a
        term does not reach)."""
        grads = {}
        for name, term in guides.items():
            found = torch.autograd.grad(self.scaled(term), params, retain_graph=True, allow_unused=True)
            grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]
        return grads

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def close_routing_stats(self, split):
        """Turn the routing seen since the last call into a record; print and write it."""
        if self.routing_stats is None:
            return
        record = self.routing_stats.close(self.finished_epochs, split)
        if record is not None:
            print(self.routing_stats.summary(record))
            self.routing_stats.write(self.output_dir, self.routing_stats_stem)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_identity(self):
        """What this trainer's checkpoints belong to (`trainers.runs.identity`)."""
        cfg, keys = self.cfg, config_values(self.cfg, self.identity_keys)
        names = (self.model.routing_names, self.classnames, self.class_specific_tensors())
        backbone = cfg.MODEL.BACKBONE
        return make_identity(
            cfg.TRAINER.NAME,
            backbone.NAME,
            self.backbone_fingerprint,
            keys,
            *names,
            self.model.training_state(),
            backbone.WEIGHTS,
            backbone.MODEL_CONFIG,
        )

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Dassl's hook; `model_name` is set only for `model-best.pth.tar`, which the
        `checkpoint` marker never names (it names the newest epoch's checkpoint)."""
        info = {
            "epoch": epoch + 1,
            "max_epoch": self.max_epoch,
            "val_result": val_result,
            "trainer": self.cfg.TRAINER.NAME,
            "identity": self.checkpoint_identity(),
        }
        for name in self.get_model_names():
            state = training_state(self._models[name], self._optims[name], self._scheds[name], self.scaler)
            save_checkpoint({**state, **info}, osp.join(directory, name), model_name or None)

    def resume_model_if_exist(self, directory):
        """Resume from this run's own folder when it holds a checkpoint (a resumed run that was
        interrupted again), else from `directory` (--resume, CoOp's flag)."""
        parts = {n: (self._models[n], self._optims[n], self._scheds[n]) for n in self.get_model_names()}
        found = resume_training(parts, self.scaler, [self.output_dir, directory], self.checkpoint_identity())
        if found is None:
            print("No checkpoint found, train from scratch")
            return 0
        source, self.finished_epochs = found
        if self.routing_stats is not None:  # keep the records of the finished epochs
            self.routing_stats.restore(source, self.routing_stats_stem, self.finished_epochs)
        return self.finished_epochs

    def load_model(self, directory, epoch=None):
        learns = any(p.requires_grad for p in self.model.parameters())
        if not learns:
            if directory:
                print(
                    f"Note: {self.cfg.TRAINER.NAME} has no learned tensors: nothing to load from {directory}"
                )
            return
        if not directory:
            print("Note: no --model-dir given: evaluating the untrained initial prompts")
            return
        best = epoch is None and self.cfg.TEST.FINAL_MODEL == "best_val"
        models = {name: self._models[name] for name in self.get_model_names()}
        self.finished_epochs = load_for_evaluation(models, directory, self.checkpoint_identity(), epoch, best)


def check_input(cfg, clip_model):
    """INPUT.SIZE must be the image tower's; INPUT.PIXEL_MEAN / PIXEL_STD those the backbone's
    weights were trained with, where its pretrained tag says (open_clip: SigLIP's 0.5, ...)."""
    name, resolution = cfg.MODEL.BACKBONE.NAME, image_resolution(clip_model)
    if tuple(cfg.INPUT.SIZE) != resolution:
        raise ValueError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the image tower of {name} "
            f"({resolution[0]} x {resolution[1]} px): set INPUT.SIZE {resolution}"
        )
    preprocess = pretrained_normalization(clip_model)
    if preprocess is None:
        return
    for key, expected in (("PIXEL_MEAN", preprocess["mean"]), ("PIXEL_STD", preprocess["std"])):
        given = tuple(float(v) for v in cfg.INPUT[key])
        if any(abs(a - b) > 1e-6 for a, b in zip(given, expected)) or len(given) != len(expected):
            raise ValueError(
                f"INPUT.{key} {list(given)} is not the normalisation {name} ({cfg.MODEL.BACKBONE.WEIGHTS}) "
                f"was trained with: set INPUT.{key} {list(expected)}"
            )
