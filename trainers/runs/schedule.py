"""Per-epoch learning-rate schedule with Dassl's warm-up semantics, in closed form.

Dassl's warm-up schedulers pass `verbose` to `LRScheduler.__init__`, a TypeError on torch 2.14,
and pickle the wrapped scheduler into checkpoints. This scheduler reproduces the values Dassl
gives per epoch for its default `WARMUP_RECOUNT True`:

- epochs 0 .. W-1: the constant warm-up lr (`constant`), or `min_lr` at epoch 0 then
  base_lr * e / W (`linear`);
- epoch e >= W, with t = e - W (the count restarts after warm-up, so the last cosine epoch
  never reaches 0, as in CoOp's runs):
  - `cosine`: base_lr * (1 + cos(pi * t / T)) / 2 with T = MAX_EPOCH;
  - `single_step`: base_lr * gamma ** (t // S), S = the last OPTIM.STEPSIZE (MAX_EPOCH if <= 0);
  - `multi_step`: base_lr * gamma ** (number of OPTIM.STEPSIZE milestones <= t).

`recount=False` keeps counting from epoch 0 instead (e in place of e - W). Each parameter group
keeps its own base lr (e.g. image LayerNorms at 0.1x); warm-up values are absolute for every
group, as in Dassl. The state is one integer, so checkpoints stay plain.
"""

import bisect
import math

POLICIES = ("cosine", "single_step", "multi_step")


class EpochLRSchedule:
    def __init__(
        self,
        optimizer,
        max_epoch,
        warmup_epoch=0,
        warmup_type="constant",
        warmup_lr=1e-5,
        recount=True,
        policy="cosine",
        stepsize=(-1,),
        gamma=0.1,
    ):
        if policy not in POLICIES:
            raise ValueError(f"OPTIM.LR_SCHEDULER {policy!r} is not supported; use one of {POLICIES}")
        stepsize = tuple(stepsize) if isinstance(stepsize, (list, tuple)) else (stepsize,)
        if policy == "multi_step" and any(s <= 0 for s in stepsize):
            raise ValueError(
                f"OPTIM.STEPSIZE {stepsize} must list positive milestone epochs for 'multi_step'"
            )
        if warmup_epoch > 0 and warmup_type not in ("constant", "linear"):
            raise ValueError(f"OPTIM.WARMUP_TYPE must be 'constant' or 'linear', not {warmup_type!r}")
        self.optimizer = optimizer
        self.max_epoch = max_epoch
        self.warmup_epoch = max(warmup_epoch, 0)
        self.warmup_type = warmup_type
        self.warmup_lr = warmup_lr
        self.recount = recount
        self.policy = policy
        self.gamma = gamma
        self.milestones = sorted(stepsize)
        # Dassl's single_step takes the last STEPSIZE entry, and the whole run for one <= 0.
        self.step_size = stepsize[-1] if stepsize[-1] > 0 else max_epoch
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self._apply()

    def lr_at(self, epoch, base_lr):
        if epoch < self.warmup_epoch:
            if self.warmup_type == "constant":
                return self.warmup_lr
            return self.warmup_lr if epoch == 0 else base_lr * epoch / self.warmup_epoch
        t = epoch - self.warmup_epoch if self.recount else epoch
        if self.policy == "single_step":
            return base_lr * self.gamma ** (t // self.step_size)
        if self.policy == "multi_step":
            return base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)
        return base_lr * (1 + math.cos(math.pi * t / self.max_epoch)) / 2

    def step(self):
        """Advance to the next epoch (called once at the end of every epoch)."""
        self.epoch += 1
        self._apply()

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self._apply()

    def _apply(self):
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.epoch, base_lr)
