"""Tiny random open_clip models, built from JSON model configs in open_clip's format (nothing is
downloaded), as `MODEL.BACKBONE.NAME open_clip:<name>` loads them: a config file
(`MODEL.BACKBONE.MODEL_CONFIG`) and a checkpoint of its random weights (`MODEL.BACKBONE.WEIGHTS`).

- "causal": CLIP's architecture (open_clip `CLIP`, QuickGELU, BPE, causal, EOT pooling);
- "layerscale": the same with LayerScale (`ls_1`, `ls_2`, random gammas) in both towers;
- "bidirectional": MobileCLIP's text side, CLIP's BPE and EOT pooling without the causal mask;
- "siglip": SigLIP's text side (`CustomTextCLIP`, bidirectional attention, pooling at the last
  of 32 positions, a projection with a bias, a logit bias) with a Hugging Face word-level
  tokenizer of its own (EOS after the text, padded with 0), written to a local folder.
"""

import json
import os
import re
from typing import NamedTuple

import torch

VISION = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
CONFIGS = {
    "causal": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": VISION, "text_cfg": TEXT},
    "layerscale": {
        "embed_dim": 32,
        "vision_cfg": {**VISION, "ls_init_value": 0.1},
        "text_cfg": {**TEXT, "ls_init_value": 0.1},
    },
    "bidirectional": {  # MobileCLIP's text side: CLIP's BPE and EOT pooling without the causal mask
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": VISION,
        "text_cfg": {**TEXT, "no_causal_mask": True},
    },
    "siglip": {
        "embed_dim": 32,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": VISION,
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 600,
            "hf_tokenizer_name": "",  # the local folder, filled in by `write_model`
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": 64,
            "heads": 2,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    },
}
SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 (T5's order of pad and EOS)
# Words of the tests' class names and texts (the generated datasets' "dog breed 00", ...).
TEST_WORDS = "dog cat breed texture great pyrenees mountain school bus yellow boxer bengal chihuahua x"


class TinyOpenCLIP(NamedTuple):
    name: str  # MODEL.BACKBONE.NAME
    config: str  # MODEL.BACKBONE.MODEL_CONFIG
    weights: str  # MODEL.BACKBONE.WEIGHTS
    kind: str

    def opts(self):
        """Config options that select this backbone."""
        return [
            "MODEL.BACKBONE.NAME", self.name, "MODEL.BACKBONE.WEIGHTS", self.weights,
            "MODEL.BACKBONE.MODEL_CONFIG", self.config,
        ]  # fmt: skip

    def opts_for_reference_path(self):
        """Its options, plus the reference text path where the tower needs it (SigLIP's)."""
        reference = ["TRAINER.TEXT_ENCODER.TRUNCATE", "False", "TRAINER.TEXT_ENCODER.SHARE_PREFIX", "False"]
        return self.opts() + (reference if self.kind == "siglip" else [])

    def load(self):
        from clipprompt.clip_loading import load_clip

        return load_clip(self.name, weights=self.weights, model_config=self.config)


def vocabulary():
    """The word-level vocabulary of the SigLIP-style tokenizer: the words of the repository's
    template pools, of the Oxford Pets and DTD configs and of the tests (`TEST_WORDS`, numbers
    "00" to "99"); other words become <unk>."""
    from clipprompt.hard_prompts import POOLS

    text = " ".join(t for pool in POOLS.values() for t in pool)
    for name in ("oxford_pets", "dtd"):
        with open(os.path.join("configs", "datasets", f"{name}.yaml"), encoding="utf-8") as f:
            text += " " + f.read()
    words = set(re.findall(r"[a-z]+", text.lower() + " " + TEST_WORDS)) | {f"{i:02d}" for i in range(100)}
    return SPECIALS + sorted(words)


def write_tokenizer(folder):
    """A Hugging Face word-level tokenizer (`transformers` loads it): `text </s>`, pad 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocabulary()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return folder, len(words)


def write_model(kind, folder, seed=0):
    """Write `kind`'s JSON config and random weights into `folder`; return its `TinyOpenCLIP`."""
    from clipprompt.open_clip_backbone import OpenCLIPSource, build_open_clip

    os.makedirs(folder, exist_ok=True)
    config = json.loads(json.dumps(CONFIGS[kind]))
    if kind == "siglip":
        tokenizer_folder, size = write_tokenizer(os.path.join(folder, "tokenizer"))
        assert size <= config["text_cfg"]["vocab_size"]
        config["text_cfg"]["hf_tokenizer_name"] = tokenizer_folder
    config_path = os.path.join(folder, f"tiny-{kind}.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    name = f"open_clip:tiny-{kind}"
    model = build_open_clip(config, OpenCLIPSource.parse(name, model_config=config_path), seed=seed)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed + 1)
    # LayerScale's constant initial gammas and the projection's zero bias would hide a missing one.
    for key, value in state.items():
        if key.endswith(".gamma"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key == "text.text_projection.bias":
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
    weights = os.path.join(folder, f"tiny-{kind}.pt")
    torch.save(state, weights)
    return TinyOpenCLIP(name, config_path, weights, kind)
