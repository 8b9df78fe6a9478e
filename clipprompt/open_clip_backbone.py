"""open_clip backbones: `MODEL.BACKBONE.NAME "open_clip:<model>"` (docs/BACKBONES.md).

The architecture is open_clip's model config of that name, or the JSON file
`MODEL.BACKBONE.MODEL_CONFIG` (open_clip's format: `embed_dim`, `vision_cfg`, `text_cfg`, ...;
also an `open_clip_config.json` with its `model_cfg`); the weights are `MODEL.BACKBONE.WEIGHTS`
(a pretrained tag, an hf-hub: name or a file, from the cache folder: `open_clip_weights`).

The model is open_clip's own `CLIP` or `CustomTextCLIP`, frozen, in fp32 or with OpenAI's fp16
layout, carrying a `Backbone` (its name, source, model config, tokenizer, normalisation) that
`clipprompt.towers` reads. What the towers cannot run (CoCa, Hugging Face text encoders) is
refused before anything is downloaded.
"""

import copy
import json
import os
import pickle
from typing import NamedTuple

import torch
from safetensors import SafetensorError

from .clip_loading import CheckpointError
from .open_clip_weights import resolve_weights

PREFIX = "open_clip:"
ATTRIBUTE = "clipprompt_backbone"


def is_open_clip_name(name):
    return str(name).startswith(PREFIX)


class OpenCLIPSource(NamedTuple):
    """Where an open_clip backbone comes from (the MODEL.BACKBONE keys)."""

    model: str  # open_clip's model name, e.g. "ViT-B-16" (the NAME after "open_clip:")
    weights: str = ""  # pretrained tag, "hf-hub:org/repo[/file]" or a checkpoint file
    model_config: str | dict = ""  # a JSON model config file or its dict ("" = open_clip's own of `model`)
    download_root: str = ""

    @property
    def name(self):
        return PREFIX + self.model

    @classmethod
    def parse(cls, name, weights="", model_config="", download_root=""):
        model = name[len(PREFIX) :].strip().replace("/", "-")
        if not model:
            raise CheckpointError(
                f"MODEL.BACKBONE.NAME {name!r} names no model: write open_clip:<model>, e.g. open_clip:ViT-B-16"
            )
        return cls(model, weights, model_config, download_root)


class Backbone:
    """What this repository keeps of a loaded open_clip model: its name and source, its model config
    (`config`, recorded in exported files), its tokenizer (open_clip's, adapted per pooling by
    `tokenizer`) and its preprocessing (mean, std) where its pretrained tag says it."""

    def __init__(self, source, config, own_tokenizer, preprocess=None):
        self.source = source
        self.name = source.name
        self.config = config
        self.own_tokenizer = own_tokenizer
        self.preprocess = preprocess
        self._adapters = {}

    def tokenizer(self, context_length, pool, eos_id):
        """The `clipprompt.tokenization.Tokenizer` of the model, for its text tower's pooling."""
        from open_clip.tokenizer import SimpleTokenizer

        from .tokenization import BPETokenizer, HFTokenizer, TokenizerError

        key = (context_length, pool, eos_id)
        if key not in self._adapters:
            own = self.own_tokenizer
            if isinstance(own, SimpleTokenizer):
                if own.reduction_fn is not None:
                    raise TokenizerError(
                        f"{self.name}: its tokenizer drops tokens at random (reduction_mask)"
                    )
                self._adapters[key] = BPETokenizer(own, context_length, pool, eos_id)
            else:
                label = getattr(own.tokenizer, "name_or_path", type(own).__name__)
                self._adapters[key] = HFTokenizer(own, label, context_length, pool, eos_id)
        return self._adapters[key]


def backbone_of(model):
    """The `Backbone` of an open_clip model loaded here (`load_open_clip`, `build_open_clip`)."""
    backbone = getattr(model, ATTRIBUTE, None)
    if backbone is None:
        from .towers import UnsupportedTower

        raise UnsupportedTower(
            f"this open_clip {type(model).__name__} was not built by clipprompt.open_clip_backbone: its "
            "tokenizer is unknown. Load it with clipprompt.clip_loading.load_clip('open_clip:<model>', ...) "
            "or build it with clipprompt.open_clip_backbone.build_open_clip"
        )
    return backbone


def architecture(model):
    """The open_clip model config of a model loaded here, else None."""
    backbone = getattr(model, ATTRIBUTE, None)
    return None if backbone is None else backbone.config


def pretrained_normalization(model):
    """{"mean", "std"} the model's weights were trained with where its pretrained tag says, else
    None (OpenAI's CLIP and checkpoint files: the configs' CLIP normalisation is not checked)."""
    backbone = getattr(model, ATTRIBUTE, None)
    return None if backbone is None else backbone.preprocess


def model_config(source):
    """open_clip's model config (a dict) of the source: its JSON file, else open_clip's own."""
    import open_clip

    if isinstance(source.model_config, dict):
        return copy.deepcopy(source.model_config)
    if source.model_config:
        path = os.path.expanduser(source.model_config)
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"MODEL.BACKBONE.MODEL_CONFIG {path} cannot be read as JSON ({err})"
            ) from None
        config = config.get("model_cfg", config) if isinstance(config, dict) else {}  # open_clip_config.json
        missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
        if missing:
            raise CheckpointError(
                f"MODEL.BACKBONE.MODEL_CONFIG {path} lacks {', '.join(missing)}: give a model config in "
                "open_clip's format (as open_clip/model_configs/*.json)"
            )
        return config
    config = open_clip.get_model_config(source.model)
    if config is None:
        raise CheckpointError(
            f"MODEL.BACKBONE.NAME {source.name}: open_clip has no model {source.model!r} (open_clip."
            "list_models() lists them, e.g. ViT-B-16, EVA02-B-16, ViT-B-16-SigLIP); for another "
            "architecture set MODEL.BACKBONE.MODEL_CONFIG to its JSON model config"
        )
    return config


# What torch.load, safetensors and open_clip's load_checkpoint raise for a file that is not a
# checkpoint of the model (unreadable, another format, other tensors).
CHECKPOINT_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    KeyError,
    AttributeError,
    pickle.UnpicklingError,
    SafetensorError,
)


def _refuse_unsupported(config, name):
    text = config.get("text_cfg", {})
    if "multimodal_cfg" in config:
        raise CheckpointError(f"{name} is a CoCa model (captioning decoder): not supported, use a CLIP model")
    if text.get("hf_model_name"):
        raise CheckpointError(
            f"{name}'s text tower is the Hugging Face model {text['hf_model_name']}: prompts need a CLIP "
            "text transformer (docs/BACKBONES.md lists what runs)"
        )


def own_tokenizer(config, name):
    """open_clip's tokenizer of a model config, as `open_clip.get_tokenizer` chooses it."""
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, SimpleTokenizer

    text = config["text_cfg"]
    length = text.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text.get("tokenizer_kwargs", {}))
    hf_name = text.get("hf_tokenizer_name")
    if not hf_name:
        return SimpleTokenizer(context_length=length, **kwargs)
    from open_clip.tokenizer import HFTokenizer

    try:
        return HFTokenizer(
            hf_name, context_length=length, tokenizer_mode=text.get("tokenizer_mode"), **kwargs
        )
    except ImportError as err:
        raise CheckpointError(
            f"{name} tokenizes with the Hugging Face tokenizer {hf_name}, which needs the transformers "
            f"package ({err}): pip install transformers sentencepiece"
        ) from None
    except OSError as err:
        raise CheckpointError(
            f"The tokenizer {hf_name} of {name} is not in the Hugging Face cache and cannot be downloaded "
            f"({str(err).splitlines()[0]}). Run once where there is network access (it is cached in "
            "HF_HOME), or set hf_tokenizer_name in a MODEL.BACKBONE.MODEL_CONFIG to a folder holding "
            "its files (tokenizer.json ...)."
        ) from None


def build_open_clip(
    config, source, checkpoint=None, dtype=torch.float32, preprocess=None, seed=0, tokenizer=None
):
    """open_clip's model of `config`, frozen and in eval mode, with `checkpoint`'s weights (None:
    random weights drawn with `seed`), in fp32 or OpenAI's fp16 layout, carrying its `Backbone`
    (with `tokenizer`, open_clip's tokenizer of the config, made here when not given)."""
    from open_clip.factory import load_checkpoint
    from open_clip.model import CLIP, CustomTextCLIP

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"open_clip weights can be float32 or float16, not {dtype}")
    _refuse_unsupported(config, source.name)
    tokenizer = tokenizer or own_tokenizer(config, source.name)  # a missing one fails before the build
    recorded, config = copy.deepcopy(config), copy.deepcopy(config)
    custom_text = config.pop("custom_text", False)
    timm = bool(config["vision_cfg"].get("timm_model_name"))
    if timm:
        config["vision_cfg"]["timm_model_pretrained"] = False  # the checkpoint has the weights
    cast = torch.float16 if dtype == torch.float16 else None  # fp16 builds fp32 LayerNorms
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = (CustomTextCLIP if custom_text else CLIP)(**config, cast_dtype=cast)
    if checkpoint is not None:
        try:
            load_checkpoint(model, checkpoint, strict=True)
        except CHECKPOINT_ERRORS as err:  # unreadable file or other weights: say which and what to do
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise CheckpointError(
                f"{checkpoint} does not hold the weights of {source.name} ({type(err).__name__}: {first}). "
                "Check MODEL.BACKBONE.WEIGHTS (the checkpoint of this architecture) and MODEL.BACKBONE.NAME "
                "/ MODEL_CONFIG (the architecture of the checkpoint)."
            ) from None
    if dtype == torch.float16:
        convert_weights_to_lp(model)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    setattr(model, ATTRIBUTE, Backbone(source, recorded, tokenizer, preprocess))
    return model


def convert_weights_to_lp(model):
    """open_clip's fp16 layout (its `create_model(precision="fp16")`): matmul weights, attention
    projections and the towers' projections in fp16, LayerNorms in fp32; a timm image tower
    entirely in fp16 but for open_clip's fp32 LayerNorms. Done here rather than by open_clip's
    `convert_weights_to_lp`, which fails on a projection with a bias (an `nn.Linear`) and leaves
    LayerScale's gammas in fp32, so that the residual stream turns fp32 and the next block's fp16
    weights refuse it."""
    from open_clip.transformer import LayerNormFp32, LayerScale

    if getattr(model.visual, "trunk", None) is not None:
        model.half()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear, LayerScale)):
            module.half()
        for name in ("in_proj_weight", "in_proj_bias", "text_projection", "proj"):
            param = getattr(module, name, None)
            if isinstance(param, torch.nn.Parameter):
                param.data = param.data.half()
    for module in model.modules():
        if isinstance(module, LayerNormFp32):
            module.float()


def load_open_clip(source, dtype=torch.float32):
    """The frozen open_clip model of `source` (module docstring)."""
    try:
        import open_clip  # noqa: F401
    except ImportError as err:
        raise CheckpointError(
            f"{source.name} needs open_clip ({err}): pip install open-clip-torch (requirements.txt)"
        ) from None
    config = model_config(source)
    _refuse_unsupported(config, source.name)
    tokenizer = own_tokenizer(config, source.name)  # a missing one fails before any weights are fetched
    path, tag = resolve_weights(source, config)
    preprocess = {"mean": tuple(tag["mean"]), "std": tuple(tag["std"])} if tag.get("mean") else None
    return build_open_clip(config, source, path, dtype, preprocess, tokenizer=tokenizer)
