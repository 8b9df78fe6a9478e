"""IVLP: independent vision-language prompting, the deep-prompt baseline of Khattak et al.
"MaPLe: Multi-modal Prompt Learning". CVPR 2023, and of Khattak et al. "Self-regulating Prompts:
Foundational Model Adaptation without Forgetting". ICCV 2023.

Dassl trainer: the config keys of IVLP and the model they build (`clipprompt.methods.ivlp`:
learnable tokens in the first J layers of the text and of the image tower, uncoupled,
cross-entropy). Configs: `vit_b16_c2_ep5_batch4_2+2ctx` (MaPLe's release: 2 + 2 tokens, J = 12,
5 epochs), `vit_b16_c2_ep20_batch4_4+4ctx` (PromptSRC's release: 4 + 4, J = 9, 20 epochs) and
`vit_b16_c2_ep5_batch4_4ctx_language_only` (deep text prompts only).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from clipprompt.methods.ivlp import DeepPromptCLIP, IndependentPrompts, tower_depths

from .prompt_trainer import PromptTrainer


def add_config(cfg):
    cfg.TRAINER.IVLP = CN()
    add_deep_prompt_keys(cfg.TRAINER.IVLP)


# The keys of `add_deep_prompt_keys`: they decide the learned tensors' shapes and layout, so a
# checkpoint names them in its identity (IVLP's and PromptSRC's `identity_keys`).
DEEP_PROMPT_KEYS = ("N_CTX_TEXT", "N_CTX_VISION", "CTX_INIT", "PROMPT_DEPTH_TEXT", "PROMPT_DEPTH_VISION")


def add_deep_prompt_keys(node):
    """The prompt keys IVLP and PromptSRC share (the released configs' names)."""
    # Learnable text tokens per layer n (layer 0 sits after SOS, in place of words).
    node.N_CTX_TEXT = 2
    # Learnable image tokens per layer n_v (appended after the patch tokens); 0 with depth 0.
    node.N_CTX_VISION = 2
    # Words whose first N_CTX_TEXT BPE tokens initialise layer 0; the rest stay as text before the
    # class name ("a photo of a", n = 2: "P1 P2 of a CLASS."). "" = random N(0, 0.02^2).
    node.CTX_INIT = "a photo of a"
    # J: text layers carrying prompts, layer 0 included (at most the text tower's blocks).
    node.PROMPT_DEPTH_TEXT = 12
    # J_v: image layers carrying prompts (0 = language-only; at most the image tower's blocks).
    node.PROMPT_DEPTH_VISION = 12


def check_deep_prompt_keys(node, where):
    """Errors for IVLP-style keys under `where` (e.g. "TRAINER.IVLP")."""
    if node.PROMPT_DEPTH_TEXT < 1:
        raise ValueError(
            f"{where}.PROMPT_DEPTH_TEXT must be at least 1 (layer 0), not {node.PROMPT_DEPTH_TEXT}"
        )
    if node.PROMPT_DEPTH_VISION < 0:
        raise ValueError(f"{where}.PROMPT_DEPTH_VISION must be 0 or more, not {node.PROMPT_DEPTH_VISION}")
    if node.N_CTX_TEXT < 1:
        raise ValueError(f"{where}.N_CTX_TEXT must be at least 1, not {node.N_CTX_TEXT}")
    if (node.PROMPT_DEPTH_VISION == 0) != (node.N_CTX_VISION == 0):
        raise ValueError(
            f"{where}.N_CTX_VISION {node.N_CTX_VISION} and PROMPT_DEPTH_VISION {node.PROMPT_DEPTH_VISION}: "
            "image prompts need both at least 1; set both to 0 for language-only prompts"
        )


def check_towers(clip_model, backbone, trainer, text, image):
    """One error when the CLIP cannot carry prompts this deep (a ResNet image tower carries none);
    `text`, `image`: (depth, its config key)."""
    text_blocks, image_blocks = tower_depths(clip_model)
    if image[0] and not image_blocks:
        raise ValueError(
            f"{trainer} prompts the layers of a ViT image tower, but {backbone} (MODEL.BACKBONE.NAME) has a "
            "ResNet image tower: use a ViT backbone such as ViT-B/16"
        )
    for (depth, key), blocks, tower in ((text, text_blocks, "text"), (image, image_blocks, "image")):
        if depth > blocks:
            raise ValueError(
                f"{key} {depth} is deeper than the {blocks} blocks of {backbone}'s {tower} tower: "
                f"choose at most {blocks}"
            )


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    add_config = staticmethod(add_config)
    benchmark_rows = (("IVLP", "vit_b16_c2_ep5_batch4_2+2ctx", True),)
    identity_keys = tuple(f"TRAINER.IVLP.{k}" for k in DEEP_PROMPT_KEYS)

    @classmethod
    def check_cfg(cls, cfg):
        super().check_cfg(cfg)
        check_deep_prompt_keys(cfg.TRAINER.IVLP, "TRAINER.IVLP")

    def make_model(self, clip_model):
        opts = self.cfg.TRAINER.IVLP
        check_deep_towers(self, clip_model, opts, "IVLP")
        prompts = independent_prompts(self, clip_model, opts)
        return DeepPromptCLIP(clip_model, prompts, self.build_text_encoder(clip_model))


def check_deep_towers(trainer, clip_model, opts, name):
    """`check_towers` for a config node with IVLP's keys (TRAINER.<NAME>)."""
    where = f"TRAINER.{name.upper()}"
    text = (opts.PROMPT_DEPTH_TEXT, f"{where}.PROMPT_DEPTH_TEXT")
    image = (opts.PROMPT_DEPTH_VISION, f"{where}.PROMPT_DEPTH_VISION")
    check_towers(clip_model, trainer.cfg.MODEL.BACKBONE.NAME, name, text, image)


def independent_prompts(trainer, clip_model, opts):
    """IVLP's prompts over the trainer's classes from a config node with IVLP's keys."""
    return IndependentPrompts(
        trainer.classnames,
        clip_model,
        opts.N_CTX_TEXT,
        opts.CTX_INIT,
        opts.PROMPT_DEPTH_TEXT,
        opts.N_CTX_VISION,
        opts.PROMPT_DEPTH_VISION,
        trainer.cfg.TRAINER.TEXT_ENCODER.TRUNCATE,
    )
