"""PLOT: Chen, Yao, Song, Li, Rao, Zhang. "PLOT: Prompt Learning with Optimal Transport for
Vision-Language Models". ICLR 2023.

Dassl trainer: the config keys of PLOT and the model they build (`clipprompt.methods.plot`: N
prompts per class matched to the image tower's local features by Sinkhorn optimal transport,
trained with cross-entropy). The authors' recipe is CLIP RN50 (`configs/trainers/PLOT/rn50.yaml`);
PLOT++ (their ViT-B/16 variant with visual prompts and two training stages) is not implemented.
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.plot import PLOTCLIP, PromptSet, TransportOptions

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.PLOT = CN()
    # Number of prompts per class N (the release's default and scripts: 4).
    cfg.TRAINER.PLOT.N = 4
    # Learnable context vectors per prompt (the release: 16), each drawn from N(0, 0.02^2).
    cfg.TRAINER.PLOT.N_CTX = 16
    # Where the class name goes relative to the context: end (the release's setting), middle or front.
    cfg.TRAINER.PLOT.CLASS_TOKEN_POSITION = "end"
    # Entropic regularisation eps of the Sinkhorn iterations (the release: 0.1).
    cfg.TRAINER.PLOT.EPS = 0.1
    # At most this many Sinkhorn iterations (the release: 100).
    cfg.TRAINER.PLOT.SINKHORN_MAX_ITER = 100
    # Stop at the first iteration whose mean |r - r_previous| is below this (the release: 0.01).
    cfg.TRAINER.PLOT.SINKHORN_THRESHOLD = 0.01
    # Add the global logit s * <v, normalize(mean_n g_{n,c})> (the release: on ImageNet only).
    cfg.TRAINER.PLOT.GLOBAL_LOGITS = False


@TRAINER_REGISTRY.register()
class PLOT(PromptTrainer):
    add_config = staticmethod(add_config)
    identity_keys = ("TRAINER.PLOT.N", "TRAINER.PLOT.N_CTX", "TRAINER.PLOT.CLASS_TOKEN_POSITION")

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        opts = cfg.TRAINER.PLOT
        if opts.N < 1 or opts.EPS <= 0 or opts.SINKHORN_MAX_ITER < 1 or opts.SINKHORN_THRESHOLD < 0:
            raise ValueError(
                "TRAINER.PLOT needs N >= 1, EPS > 0, SINKHORN_MAX_ITER >= 1 and SINKHORN_THRESHOLD >= 0; "
                f"got N {opts.N}, EPS {opts.EPS}, SINKHORN_MAX_ITER {opts.SINKHORN_MAX_ITER}, "
                f"SINKHORN_THRESHOLD {opts.SINKHORN_THRESHOLD}"
            )

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.PLOT
        prompts = PromptSet(
            self.classnames,
            clip_model.token_embedding,
            opts.N,
            opts.N_CTX,
            opts.CLASS_TOKEN_POSITION,
            self.cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
        )
        transport = TransportOptions(
            opts.EPS, opts.SINKHORN_MAX_ITER, opts.SINKHORN_THRESHOLD, opts.GLOBAL_LOGITS
        )
        return PLOTCLIP(clip_model, prompts, self.build_text_encoder(clip_model), transport)
