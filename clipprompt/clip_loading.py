"""Load a frozen CLIP model from an OpenAI model name or a local checkpoint, or an open_clip model
(`open_clip:<model>`, `clipprompt.open_clip_backbone`).

`clip.load` cannot be used for local state dicts on today's torch: after its TorchScript
attempt it does not rewind the file, so `torch.load` hits EOF. We therefore read the file
ourselves (TorchScript archive, plain state dict, or a gzip-compressed state dict) and always
build the model with `clip.model.build_model`, so every source goes through one path.
"""

import gzip
import hashlib
import io
import os
import urllib.error
import warnings
import zipfile

import torch

# openai-clip imports pkg_resources, which warns on every setuptools < 81; the warning is noise.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import clip
    from clip.model import CLIP, build_model, convert_weights


class CheckpointError(RuntimeError):
    """A CLIP checkpoint is missing, unreadable or does not describe a CLIP model."""


def resolve_checkpoint(name, download_root=""):
    """Map `name` (OpenAI model name or file path) to a local file, downloading if needed."""
    if name in clip.available_models():
        root = download_root or os.path.expanduser("~/.cache/clip")
        url = clip.clip._MODELS[name]
        try:
            # clip's own downloader verifies the SHA256 embedded in the URL.
            return clip.clip._download(url, root)
        except (urllib.error.URLError, OSError) as err:  # no network, proxy, unwritable folder
            target = os.path.join(root, os.path.basename(url))
            raise CheckpointError(
                f"The CLIP weights of {name!r} are not in {root} and cannot be downloaded ({err}). "
                f"Download {url} where there is network access and put it at {target} (or set "
                "MODEL.BACKBONE.DOWNLOAD_ROOT to the folder that holds it), or set "
                "MODEL.BACKBONE.NAME to the path of a local checkpoint."
            ) from err
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return path
    raise CheckpointError(
        f"MODEL.BACKBONE.NAME '{name}' is neither an OpenAI CLIP model "
        f"({', '.join(clip.available_models())}) nor an existing checkpoint file. "
        "Give a model name, or the path to a TorchScript archive or a state dict (.pt or .pt.gz)."
    )


def read_state_dict(path):
    """Return the CLIP state dict stored at `path` (TorchScript, state dict, or gzip of either)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise CheckpointError(f"Cannot read CLIP checkpoint {path}: {err}") from err
    buffer = io.BytesIO(data)
    if not zipfile.is_zipfile(buffer):
        raise CheckpointError(
            f"CLIP checkpoint {path} is not a torch archive (corrupt or truncated file?). "
            "Delete it and download it again, or point MODEL.BACKBONE.NAME to a valid file."
        )
    try:
        buffer.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            return torch.jit.load(buffer, map_location="cpu").state_dict()
    except RuntimeError:
        pass  # not TorchScript: try a pickled state dict
    try:
        buffer.seek(0)
        obj = torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"CLIP checkpoint {path} cannot be loaded: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "text_projection" not in obj:
        raise CheckpointError(
            f"{path} does not hold a CLIP state dict (no 'text_projection' tensor). "
            "Expected a file saved from clip.model.CLIP.state_dict() or an OpenAI CLIP archive."
        )
    return obj


def load_clip(name, download_root="", dtype=torch.float32, weights="", model_config=""):
    """Build a frozen, eval-mode CLIP from `name`, in fp32 or in OpenAI's fp16 layout.

    `name` "open_clip:<model>" loads open_clip's model with `weights` (a pretrained tag, an
    hf-hub: name or a file) and optionally the architecture of `model_config` (a JSON file, or
    the dict itself); other names are OpenAI's (a model name or a checkpoint file), which take
    neither."""
    if str(name).startswith("open_clip:"):
        from .open_clip_backbone import OpenCLIPSource, load_open_clip

        return load_open_clip(OpenCLIPSource.parse(name, weights, model_config, download_root), dtype)
    if weights or model_config:
        key = "WEIGHTS" if weights else "MODEL_CONFIG"
        raise CheckpointError(
            f"MODEL.BACKBONE.{key} is set, but MODEL.BACKBONE.NAME {name!r} is an OpenAI CLIP, whose "
            f"weights NAME itself names: clear MODEL.BACKBONE.{key}, or set NAME to open_clip:<model>"
        )
    path = resolve_checkpoint(name, download_root)
    state_dict = read_state_dict(path)
    try:
        model = build_model(dict(state_dict)).float()
        # build_model rounds weights through fp16; reload so fp32 checkpoints stay exact.
        model.load_state_dict({k: v for k, v in state_dict.items() if k in model.state_dict()})
        if dtype == torch.float16:
            # OpenAI's fp16 layout: matmul weights in fp16, LayerNorms and embeddings in fp32.
            convert_weights(model)
        elif dtype != torch.float32:
            raise ValueError(f"CLIP weights can be float32 or float16, not {dtype}")
    except (KeyError, RuntimeError, AssertionError) as err:
        raise CheckpointError(
            f"{path} is not a complete CLIP state dict ({type(err).__name__}: {err})."
        ) from err
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def backbone_record(name, fingerprint, weights="", model_config=""):
    """What a checkpoint or an exported file records of its backbone: the library, the model
    name, the weights (open_clip: tag, hf-hub: name or file; OpenAI: NAME is the model or file),
    the model config file, and the weights' fingerprint (the only part compared: names and
    paths may move)."""
    library = "open_clip" if str(name).startswith("open_clip:") else "openai"
    return {
        "library": library,
        "name": name,
        "weights": weights,
        "model_config": model_config if isinstance(model_config, str) else "(recorded architecture)",
        "fingerprint": fingerprint,
    }


def describe_backbone(record):
    """ "open_clip:ViT-B-16 (laion2b_s34b_b88k)" or "ViT-B/16" of a `backbone_record`."""
    return record["name"] + (f" ({record['weights']})" if record.get("weights") else "")


def backbone_fingerprint(model):
    """A short hex digest identifying the weights of a CLIP model as loaded.

    It hashes every tensor's name, shape and values rounded to fp16, so the same checkpoint
    gives the same fingerprint whether it was loaded in fp32 or in OpenAI's fp16 layout, while
    two different CLIPs of the same widths (ViT-B/16 and ViT-B/32 are both 512) differ. Take it
    before training changes any CLIP weight (MoCoOp's release preset trains LayerNorms).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if tensor.is_floating_point():
            tensor = tensor.detach().to("cpu", torch.float16)
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_tiny_clip(
    embed_dim=32,
    image_resolution=32,
    vision_layers=2,
    vision_width=64,
    vision_patch_size=8,
    context_length=77,
    transformer_width=64,
    transformer_layers=2,
    seed=0,
):
    """A small randomly initialised `clip.model.CLIP` for tests and benchmarks.

    Head counts follow `build_model`'s inference (width // 64), so a saved state dict
    rebuilds the identical architecture through `load_clip`; widths must therefore be
    multiples of 64. Pass a tuple as `vision_layers` for the ModifiedResNet image tower.
    """
    resnet = isinstance(vision_layers, (tuple, list))
    if transformer_width % 64 or (not resnet and vision_width % 64):
        raise ValueError("CLIP widths must be multiples of 64 (one attention head per 64 dims)")
    if resnet:
        if image_resolution % 32:
            raise ValueError(
                "the ModifiedResNet image tower needs an image_resolution that is a multiple of 32"
            )
        vision_patch_size = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim,
            image_resolution,
            vision_layers,
            vision_width,
            vision_patch_size,
            context_length,
            vocab_size=49408,  # the BPE vocabulary size: token ids must index it
            transformer_width=transformer_width,
            transformer_heads=transformer_width // 64,
            transformer_layers=transformer_layers,
        )
    return model.eval()


def save_clip_state_dict(model, path):
    """Save `model` so that `load_clip(path)` rebuilds it (plain, weights-only state dict)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
