"""Finished runs without training, for the tools that read a run (prediction, export): the
config.yaml train.py writes and the last checkpoint of a trainer whose learnable tensors were
moved away from their initial values (so that a tool that ignored them would be caught)."""

import os

import torch


def saved_run(cfg, run, classnames=None, seed=0):
    """Write a finished run of `cfg` into `run` and return its trainer (built for `classnames`, or
    from the dataset): every learnable tensor gets N(0, 0.05²) added; a model without learnable
    tensors (ZeroshotCLIP) gets only its config.yaml, as an `--eval-only` run."""
    import trainers

    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    trainer = trainers.build_trainer(cfg, classnames) if classnames else trainers.build_trainer(cfg)
    learnable = [p for p in trainer.model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learnable:
            p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p))
    if learnable:
        trainer.save_model(trainer.max_epoch - 1, str(run))  # the last epoch: a finished run
    trainer.set_model_mode("eval")
    return trainer
