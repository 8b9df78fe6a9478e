"""The epoch and evaluation loop of every trainer here, in one place (it replaces Dassl's
`TrainerBase.train`, `SimpleTrainer.before_train/after_epoch/after_train/test` and
`TrainerX.run_epoch`; Dassl's data manager, evaluator, optimisers and registry stay).

    before_train   resume from the run's checkpoint (or --resume), open TensorBoard, start the clock
    epochs         run_epoch (forward_backward per batch, the log line CoOp's tools read), after_epoch
                   (the model's `end_epoch`, routing record, validation under TEST.FINAL_MODEL
                   best_val, checkpoint)
    after_train    "Finished training" (the end signal of CoOp's parse_test_res.py), the final
                   evaluation (the best validated model under
                   best_val), elapsed time

A model with nothing to learn (zero-shot CLIP) runs no epoch: train.py evaluates it, and its log
reads like a finished training run's. Evaluation passes each batch's labels to
`model_inference`, which records routing per class for models that route; class features that
do not depend on the image are encoded once per evaluation (`CachedTextFeatures`).
"""

import datetime
import os
import time
from contextlib import nullcontext

import torch
from dassl.utils import AverageMeter, MetricMeter
from tqdm import tqdm

from clipprompt.caching import CachedTextFeatures


class TrainingLoop:
    """Mixed into `PromptTrainer` (before Dassl's `TrainerX`, whose attributes it uses)."""

    def train(self):
        self.before_train()
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        if self.optim is None:
            print(f"{self.cfg.TRAINER.NAME} has nothing to train (no learnable tensors): evaluating")
            self.start_epoch = self.max_epoch
        else:
            self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME or self.output_dir)
        writer_dir = os.path.join(self.output_dir, "tensorboard")
        os.makedirs(writer_dir, exist_ok=True)
        self.init_writer(writer_dir)
        self.time_start = time.time()

    def run_epoch(self):
        """One pass over the training data: a step per batch, a log line every PRINT_FREQ
        batches (every batch when an epoch has fewer), TensorBoard scalars per batch."""
        self.set_model_mode("train")
        losses, batch_time, data_time = MetricMeter(), AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        end = time.time()
        for batch_idx, batch in enumerate(self.train_loader_x):
            self.batch_idx = batch_idx
            data_time.update(time.time() - end)
            losses.update(self.forward_backward(batch))
            batch_time.update(time.time() - end)
            freq = self.cfg.TRAIN.PRINT_FREQ
            if (self.batch_idx + 1) % freq == 0 or self.num_batches < freq:
                print(self.progress_line(losses, batch_time, data_time))
            step = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, step)
            self.write_scalar("train/lr", self.get_current_lr(), step)
            end = time.time()

    def progress_line(self, losses, batch_time, data_time):
        """Dassl's epoch line (tools.results and CoOp's scripts read it)."""
        remaining = (
            self.num_batches - self.batch_idx - 1 + (self.max_epoch - self.epoch - 1) * self.num_batches
        )
        eta = datetime.timedelta(seconds=int(batch_time.avg * remaining))
        return (
            f"epoch [{self.epoch + 1}/{self.max_epoch}] batch [{self.batch_idx + 1}/{self.num_batches}] "
            f"time {batch_time.val:.3f} ({batch_time.avg:.3f}) data {data_time.val:.3f} ({data_time.avg:.3f}) "
            f"{losses} lr {self.get_current_lr():.4e} eta {eta}"
        )

    def after_epoch(self):
        self.finished_epochs = self.epoch + 1
        self.model.end_epoch(self.finished_epochs, self.max_epoch)
        self.close_routing_stats("train")
        last = self.finished_epochs == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val")
            if result > self.best_result:
                self.best_result = result
                self.save_model(
                    self.epoch, self.output_dir, val_result=result, model_name="model-best.pth.tar"
                )
        if last or (freq > 0 and self.finished_epochs % freq == 0):
            self.save_model(self.epoch, self.output_dir)

    def after_train(self):
        # CoOp's parse_test_res.py reads a training run's log from this line on (Dassl c61a1b5
        # prints "Finish training", which it does not recognise).
        print("Finished training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val" and self.optim is not None:
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        print(f"Elapsed: {datetime.timedelta(seconds=round(time.time() - self.time_start))}")
        self.close_writer()

    @torch.no_grad()
    def test(self, split=None):
        """Accuracy (Dassl's evaluator: the `=> result` block) on `split` (TEST.SPLIT by default;
        "test" where there is no validation data)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split != "val" or self.val_loader is None:
            split, loader = "test", self.test_loader
        else:
            loader = self.val_loader
        print(f"Evaluate on the *{split}* set")
        model = self.model
        cache = model.cached_text_features() if isinstance(model, CachedTextFeatures) else nullcontext()
        with cache:
            for batch in tqdm(loader):
                image, label = self.parse_batch_test(batch)
                self.evaluator.process(self.model_inference(image, label), label)
        results = self.evaluator.evaluate()
        for key, value in results.items():
            self.write_scalar(f"{split}/{key}", value, self.epoch)
        self.close_routing_stats(split)
        return next(iter(results.values()))
