"""Linear-probe CLIP: Radford et al. "Learning Transferable Visual Models From Natural Language
Supervision". ICML 2021 (appendix A3), as CoOp's `lpclip` scripts run it (Zhou et al. "Learning
to Prompt for Vision-Language Models". IJCV 2022).

Dassl trainer: `train()` extracts the frozen image features of the training and validation
images (Dassl's test transform, as lpclip), fits the logistic regression with C searched on the
validation images (`clipprompt.methods.linear_probe`), saves the head as the run's checkpoint
("epoch 1 of 1") and evaluates it on the test split like every trainer, so train.py, the
few-shot protocol, the sweep and tools.results treat it as any other run. The model has no
weights for classes it was not fitted on: base-to-new is refused.
"""

import datetime
import random
import time
from collections import defaultdict

import torch
from dassl.data.data_manager import build_data_loader
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.learnable import learnable_parameters
from clipprompt.methods import linear_probe as method

from .prompt_trainer import PromptTrainer

# lpclip validates on min(NUM_SHOTS, 4) images per class (as the datasets' few-shot samples).
MAX_VAL_SHOTS = 4


def add_config(cfg):
    cfg.TRAINER.LINEAR_PROBE = CN()
    # The coarse grid of C (scikit-learn's inverse L2 regularisation strength), in search order
    # (lpclip's, from the CLIP paper's appendix A3).
    cfg.TRAINER.LINEAR_PROBE.C_GRID = list(method.C_GRID)
    # Rounds of the binary search in log10(C) around the grid's best C (lpclip: 8; 0: the grid's best).
    cfg.TRAINER.LINEAR_PROBE.SEARCH_STEPS = 8
    # Iteration limit of scikit-learn's lbfgs solver (lpclip: 1000).
    cfg.TRAINER.LINEAR_PROBE.MAX_ITER = 1000


def percent(fraction):
    return f"{100 * fraction:.2f}%"


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(PromptTrainer):
    add_config = staticmethod(add_config)

    def __init__(self, cfg, classnames=None, all_classnames=None, clip_model=None):
        super().__init__(cfg, classnames, all_classnames, clip_model)
        self.max_epoch = 1  # one fit: its checkpoint is that of a finished run, epoch 1 of 1

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.LINEAR_PROBE
        if not opts.C_GRID or any(not isinstance(c, (int, float)) or c <= 0 for c in opts.C_GRID):
            raise ValueError(
                f"TRAINER.LINEAR_PROBE.C_GRID must be a non-empty list of positive numbers, not {opts.C_GRID}"
            )
        if opts.SEARCH_STEPS < 0 or opts.MAX_ITER < 1:
            raise ValueError(
                "TRAINER.LINEAR_PROBE.SEARCH_STEPS must be >= 0 and MAX_ITER >= 1, not "
                f"{opts.SEARCH_STEPS} and {opts.MAX_ITER}"
            )
        if cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            raise ValueError(
                f"DATASET.SUBSAMPLE_CLASSES is {cfg.DATASET.SUBSAMPLE_CLASSES!r}, but base-to-new is not "
                "defined for LinearProbeCLIP: its classifier has weights only for the classes it was "
                "fitted on, none for new ones. Run the few-shot protocol (scripts/fewshot.sh, "
                "python -m tools.sweep --protocol fewshot), which uses all classes."
            )

    def class_specific_tensors(self):
        return True  # a weight row per class

    def make_model(self, clip_model):
        return method.LinearProbeCLIP(clip_model, len(self.classnames))

    def build_model(self):
        """The model without an optimiser: the head is fitted in closed form by `train`."""
        self.model = self.make_model(self.load_clip()).to(self.device)
        learnable = learnable_parameters(self.model)
        count = sum(p.numel() for p in learnable.values())
        print(
            f"Learnable tensors ({count:,} values): {', '.join(learnable)} "
            "(fitted by logistic regression, no optimiser)"
        )
        self.optim = self.sched = self.scaler = None
        self.register_model("prompt_learner", self.model, None, None)

    # ------------------------------------------------------------------ training: one fit

    def train(self):
        """Fit the head (or find it fitted in the run's folder), save it, evaluate on the test split."""
        self.time_start = time.time()
        self.epoch = 0
        if self.resume_model_if_exist(self.cfg.RESUME or self.output_dir) < self.max_epoch:
            self.fit()
            self.finished_epochs = self.max_epoch
            self.save_model(0, self.output_dir)
        else:
            print("The head is fitted: evaluating it")
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            self.test()
        print(f"Elapsed: {datetime.timedelta(seconds=round(time.time() - self.time_start))}")

    def fit(self):
        self.fit_head(self.features(self.dm.dataset.train_x), self.features(self.validation_images()))

    def fit_head(self, train, val):
        """Search C and set the head, from training and validation (features, labels) arrays;
        returns the `Search`."""
        opts = self.cfg.TRAINER.LINEAR_PROBE
        print(
            f"Linear probe: {len(train[1]):,} training and {len(val[1]):,} validation features "
            f"({train[0].shape[1]}-d) of {self.num_classes} classes"
        )
        search = method.search_c(train, val, tuple(opts.C_GRID), opts.SEARCH_STEPS, opts.MAX_ITER)
        grid = ", ".join(f"C {c:g}: {percent(a)}" for c, a in zip(opts.C_GRID, search.grid_accuracies))
        print(f"Validation accuracy on the grid of C: {grid}")
        for k, r in enumerate(search.rounds, start=1):
            print(
                f"Search round {k}/{len(search.rounds)}: C {r.left:.6g} ({percent(r.left_accuracy)}) "
                f"vs C {r.right:.6g} ({percent(r.right_accuracy)}) -> C {r.chosen:.6g}"
            )
        if search.unconverged:
            print(
                f"Note: lbfgs stopped at MAX_ITER {opts.MAX_ITER} before converging for C "
                f"{', '.join(f'{c:.6g}' for c in search.unconverged)} (scikit-learn's ConvergenceWarning)"
            )
        print(f"Chosen C: {float(search.c)!r}")
        self.model.set_head(*method.head_of(search.classifier, self.num_classes))
        return search

    def validation_images(self):
        """The validation images of the search: the dataset's few-shot val sample (min(K, 4) per
        class); where val is the test set (ImageNet), min(K, 4) per class of it drawn with
        Python's random seeded with SEED, as the few-shot samples are drawn."""
        dataset, shots = self.dm.dataset, self.cfg.DATASET.NUM_SHOTS
        if not dataset.val:
            raise ValueError(f"{self.cfg.DATASET.NAME} has no validation images to choose C with")
        if dataset.val is not dataset.test:
            return dataset.val
        if shots <= 0:
            raise ValueError(
                f"{self.cfg.DATASET.NAME} validates on its test set: choosing C on all of it would "
                "choose it on the test images; set DATASET.NUM_SHOTS to draw min(NUM_SHOTS, 4) per class"
            )
        by_label = defaultdict(list)
        for datum in dataset.val:
            by_label[datum.label].append(datum)
        rng, k = random.Random(self.cfg.SEED), min(shots, MAX_VAL_SHOTS)
        drawn = []
        for label in sorted(by_label):
            items = by_label[label]
            drawn += rng.sample(items, k) if len(items) > k else items
        print(
            f"{self.cfg.DATASET.NAME} validates on its test set: C is chosen on {k} of its images per class"
        )
        return drawn

    @torch.no_grad()
    def features(self, data):
        """(features `[N, D]` float64, labels `[N]`) numpy arrays of `data` (Datums) through
        Dassl's test transform and the frozen image tower, in the PREC dtype, unnormalised."""
        loader = build_data_loader(
            self.cfg,
            data_source=data,
            batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE,
            tfm=build_transform(self.cfg, is_train=False),
            is_train=False,
        )
        self.set_model_mode("eval")
        features, labels = [], []
        for batch in loader:
            image, label = self.parse_batch_test(batch)
            with self.autocast():
                features.append(self.model.encode_image(image).to("cpu", torch.float64))
            labels.append(label.cpu())
        return torch.cat(features).numpy(), torch.cat(labels).numpy()
