"""Exported classifiers: a trained run as one safetensors file that needs neither Dassl nor yacs.

`python -m tools.export --model-dir RUN --out model.safetensors` writes it; this module reads it
with torch, safetensors and clip only (and open_clip for a run on an open_clip backbone):

    from clipprompt.exported import load_exported

    classifier = load_exported("model.safetensors")  # loads the CLIP it was trained on
    classifier.predict(["photo.jpg"], topk=3)         # [{"top": [{"class", "probability"}, ...], ...}]
    logits = classifier.logits(classifier.encode_image(images))

The file holds the learned tensors (`learned.<name>`, as in the run's checkpoints) and what
classification needs, computed once at export in the run's precision: `logit_scale` (the
multiplier s of the logits), `router.weight` / `router.bias` for models that route (MoCoOp's
experts, MoPD's teachers: reported per image), and what the model's kind keeps
(`PromptedCLIP.export_tensors`), e.g. the class features `text_features` [C, D] of kind
`text_features` (zero-shot CLIP, CoOp, KgCoOp, MoPD), the expert features and router of kind
`experts` (MoCoOp), the context, meta-net and prompt layout of kind `conditional` (CoCoOp, whose
class features depend on the image), the class features and the image tower's per-layer prompts
`image_prompts` [J, n, w] of kind `prompted_image` (IVLP, MaPLe, PromptSRC), the N prompt
features per class of kind `optimal_transport` (PLOT) and the head of kind `linear_head` (the
linear probe, on unnormalised features). CLIP weights the run trained (MoCoOp's release preset:
image LayerNorms, `learned.image_encoder.*`) are put into the loaded CLIP. The JSON metadata
(safetensors header, key "clipprompt") names the kind, the trainer, the backbone and its
fingerprint, the classes, the templates, the routing, the preprocessing (the run's test
transform), the logit scale and the run.

Loading is the same for every kind: the file's kind names the model class that loads it
(`clipprompt.model.EXPORT_KINDS`, filled by `clipprompt.methods`), and the classifier calls
that model's own `encode_image`, `classify_features` and `route`: the code a trained run
evaluates with, not a second copy.

The metadata's "backbone" is the run's `clip_loading.backbone_record` (library, name, weights,
model config file, fingerprint), with open_clip's model config itself ("architecture"), made
portable (`portable_backbone`): no folder of the machine it was made on, the CLIP's file (an
OpenAI checkpoint, an open_clip weights file) by its file name and its path relative to the
exported file. `load_exported` finds it (`find_backbone`: at that relative path, or by its name
next to the exported file, in the current folder or CLIP's cache folder), or takes `backbone=` /
`weights=`, and refuses a CLIP whose fingerprint (`clip_loading.backbone_fingerprint`) is not the
recorded one. The logit bias of a SigLIP backbone comes with its weights ("logit_bias" in the
metadata too). `read_exported(path)` returns the file's tensors and metadata.
"""

import json
import os

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torchvision import transforms

from .atomic import atomic_file
from .clip_loading import CheckpointError, backbone_fingerprint, clip, describe_backbone, load_clip
from .images import open_rgb, to_rgb
from .model import EXPORT_KINDS
from .routing import Router
from .towers import embed_dim

FORMAT = "clipprompt.exported"
VERSION = 1
METADATA_KEY = "clipprompt"
LEARNED = "learned."


class ExportError(ValueError):
    """A file is not an exported classifier, or does not fit the CLIP it is loaded with."""


def save_exported(path, tensors, metadata):
    """Write `tensors` ({name: tensor}) and the JSON-ready `metadata` as safetensors, atomically."""
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    header = {METADATA_KEY: json.dumps({"format": FORMAT, "version": VERSION, **metadata})}
    data = safetensors_bytes(tensors, metadata=header)
    with atomic_file(path, "wb") as f:
        f.write(data)
    return path


def read_exported(path):
    """(tensors, metadata) of an exported classifier file, checked to be one."""
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise ExportError(f"Cannot read {path} as a safetensors file ({err})") from None
    try:
        metadata = json.loads(header[METADATA_KEY])
    except (KeyError, ValueError):
        metadata = {}
    if metadata.get("format") != FORMAT:
        raise ExportError(
            f"{path} is not a classifier written by `python -m tools.export` (no {FORMAT} metadata)"
        )
    kinds = known_kinds()
    if metadata.get("version") != VERSION or metadata.get("kind") not in kinds:
        raise ExportError(
            f"{path} is version {metadata.get('version')} of kind {metadata.get('kind')!r}; this code reads "
            f"version {VERSION} of kinds {sorted(kinds)}: export the run again with this code"
        )
    return tensors, metadata


def known_kinds():
    """{kind: model class} of every exported kind a method of `clipprompt.methods` loads."""
    from . import methods  # noqa: F401  (registers every method's kind)

    return EXPORT_KINDS


def build_preprocess(spec):
    """The run's test transform (Dassl's): resize the shorter side, centre crop, to [0, 1],
    normalise per channel and/or per image, as `spec` (the metadata's "preprocessing") says."""
    steps = [
        transforms.Resize(spec["resize"], interpolation=transforms.InterpolationMode(spec["interpolation"])),
        transforms.CenterCrop(spec["crop"]),
        transforms.ToTensor(),
    ]
    if spec["normalize"]:
        steps.append(transforms.Normalize(spec["normalize"]["mean"], spec["normalize"]["std"]))
    if spec["instance_norm"]:
        steps.append(_instance_norm)
    return transforms.Compose(steps)


def _instance_norm(image, eps=1e-8):
    flat = image.flatten(1)
    return (image - flat.mean(1)[:, None, None]) / (flat.std(1)[:, None, None] + eps)


def load_exported(path, backbone="", download_root="", device="cpu", dtype=torch.float32, weights=""):
    """The classifier in `path` on `device`, over the CLIP it was trained on, in fp32 or OpenAI's
    fp16 layout (`dtype`).

    The CLIP is the recorded one: an OpenAI model name is loaded from CLIP's cache folder
    (`download_root`, default ~/.cache/clip; downloaded where there is network), an open_clip
    model with its recorded weights (a pretrained tag, an hf-hub name), and a checkpoint or
    weights file is looked for (`find_backbone`). `backbone` gives the CLIP's name or path instead
    (e.g. a file kept elsewhere), `weights` an open_clip backbone's weights. It is refused unless
    its fingerprint is the recorded one. Tensors that contradict the metadata (a missing tensor, a
    shape that does not fit the classes, candidates or the CLIP) are an ExportError."""
    tensors, metadata = read_exported(path)
    recorded = _field(metadata, "backbone", path)
    if recorded.get("library") == "open_clip":
        name = backbone or recorded.get("name")
        weights = weights or find_backbone(recorded, path, download_root)[1]
    else:
        name = backbone or find_backbone(recorded, path, download_root)[0]
    architecture = (recorded.get("architecture") or "") if str(name).startswith("open_clip:") else ""
    try:
        clip_model = load_clip(name, download_root, dtype, weights, architecture)
    except CheckpointError as err:
        raise ExportError(
            f"{path} needs the CLIP {describe_backbone(recorded)!r} it was trained on, which cannot be "
            f"loaded from {name!r} ({err}). Pass backbone='<name or path of that CLIP>' (open_clip: "
            "weights='<its weights>') to load_exported."
        ) from None
    # On the device before the prompts are built: they keep CLIP's token embedding outside their modules.
    clip_model = clip_model.to(device)
    fingerprint = backbone_fingerprint(clip_model)
    if fingerprint != recorded.get("fingerprint"):
        loaded = describe_backbone({"name": str(name), "weights": weights})
        raise ExportError(
            f"{path} was exported for backbone {describe_backbone(recorded)!r} with fingerprint "
            f"{recorded.get('fingerprint')}, but {loaded!r} has fingerprint {fingerprint}: load it with the "
            "CLIP the run was trained on (backbone='<its name or file>', weights='<open_clip weights>')"
        )
    check_tensors(path, tensors, metadata, embed_dim(clip_model))
    return ExportedClassifier(clip_model, tensors, metadata).to(device).eval()


def portable_backbone(record, exported_to):
    """The exported file's record of the run's backbone (`record`: `clip_loading.backbone_record`
    and open_clip's "architecture") without the folders of the machine it was made on: the file
    it names (an OpenAI checkpoint in "name", an open_clip weights file in "weights") by its file
    name, with "relative_path" from the folder of `exported_to` to it; a model config file by its
    name (the architecture itself is recorded)."""
    record = dict(record)
    key = "weights" if record.get("library") == "open_clip" else "name"
    path = record.get(key) or ""
    if os.path.isfile(path) and not (key == "name" and path in clip.available_models()):
        folder = os.path.dirname(os.path.abspath(exported_to))
        record["relative_path"] = os.path.relpath(os.path.abspath(path), folder)
        record[key] = os.path.basename(path)
    if record.get("model_config"):
        record["model_config"] = os.path.basename(record["model_config"])
    return record


def find_backbone(recorded, path, download_root=""):
    """(name, weights) that `load_clip` loads for the recorded backbone of the exported file
    `path`: an OpenAI model name, an open_clip tag or hf-hub name as they are; a checkpoint or
    weights file at its recorded path relative to `path`, or by its name next to `path`, in the
    current folder or in CLIP's cache folder (ExportError naming where it looked otherwise)."""
    name = recorded.get("name")
    if not isinstance(name, str) or not name:
        raise ExportError(
            f"{path}: its metadata names no backbone: pass backbone='<name or path of the CLIP>'"
        )
    open_clip = recorded.get("library") == "open_clip"
    file = recorded.get("weights", "") if open_clip else name
    if "relative_path" not in recorded and (open_clip or name in clip.available_models()):
        return name, file if open_clip else ""
    here = os.path.dirname(os.path.abspath(path))
    relative = recorded.get("relative_path")
    candidates = [os.path.normpath(os.path.join(here, relative))] if isinstance(relative, str) else []
    folders = [here, os.getcwd(), download_root or os.path.expanduser("~/.cache/clip")]
    candidates += [os.path.join(folder, os.path.basename(file)) for folder in dict.fromkeys(folders)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return (name, candidate) if open_clip else (candidate, "")
    what = f"{name}'s weights file" if open_clip else "the CLIP file"
    pass_it = "weights='<path of that file>'" if open_clip else "backbone='<path of that file>'"
    raise ExportError(
        f"{path} was trained on {what} {os.path.basename(file)!r} (fingerprint {recorded.get('fingerprint')}), "
        f"which is not at {', '.join(dict.fromkeys(candidates))}: pass {pass_it} to load_exported, or put "
        "the file next to the exported one"
    )


def _field(metadata, key, path):
    if key not in metadata:
        raise ExportError(f"{path}: its metadata lacks {key!r}: export the run again with this code")
    return metadata[key]


def check_tensors(path, tensors, metadata, width):
    """ExportError naming the first tensor that is missing or whose shape contradicts the
    metadata: the logit scale, the router of the recorded candidates, and what the kind declares
    (`export_shapes` of its class) for the recorded classes and a CLIP of feature width `width`."""
    classnames = _field(metadata, "classnames", path)
    if not isinstance(classnames, list) or not classnames or not all(isinstance(c, str) for c in classnames):
        raise ExportError(f"{path}: its metadata's classnames must be a non-empty list of names")
    expected = {"logit_scale": ()}
    routing = metadata.get("routing")
    if routing:
        expected["router.weight"] = (len(routing.get("candidates", ())), width)
    expected |= known_kinds()[metadata["kind"]].export_shapes(metadata, width)
    for name, shape in expected.items():
        if name not in tensors:
            raise ExportError(
                f"{path} lacks the tensor {name!r} that a classifier of kind {metadata['kind']!r} needs"
            )
        got = tuple(tensors[name].shape)
        if len(got) != len(shape) or any(want is not None and g != want for g, want in zip(got, shape)):
            shown = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
            raise ExportError(
                f"{path}: tensor {name!r} has shape {list(got)}, but its metadata ({len(classnames)} classes"
                + (f", {len(routing['candidates'])} routed candidates" if routing else "")
                + f") and the CLIP's {width}-wide features need {shown}: the file was changed after export"
            )


class ExportedClassifier(nn.Module):
    """An exported classifier over a frozen CLIP (module docstring). `classnames`, `metadata` and
    `preprocess` (PIL image → tensor) describe it; `routing_names` are the candidates it routes
    to; `model` is the kind's model (`clipprompt.model.PromptedCLIP`), loaded from the file."""

    def __init__(self, clip_model, tensors, metadata):
        super().__init__()
        self.metadata = metadata
        self.kind = metadata["kind"]
        self.classnames = list(metadata["classnames"])
        self.preprocess = build_preprocess(metadata["preprocessing"])
        learned = {k[len(LEARNED) :]: v for k, v in tensors.items() if k.startswith(LEARNED)}
        _put_clip_weights(clip_model.visual, learned, "image_encoder.")
        self.model = known_kinds()[self.kind].from_export(clip_model, tensors, metadata, _router(tensors))
        self.routing_names = tuple(self.model.routing_names)
        self.register_buffer("logit_scale", tensors["logit_scale"].float())
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def device(self):
        return self.logit_scale.device

    def encode_image(self, images):
        """Normalised fp32 image features `[B, D]` of preprocessed images `[B, 3, H, W]`."""
        return self.model.encode_image(images.to(self.device))

    def route(self, image_features):
        """The candidates kept per image and their weights (`Routing`), or None."""
        return self.model.route(image_features.to(self.device).float())

    def logits(self, image_features):
        """Classification logits `[B, C]` (fp32) of image features `[B, D]` (prepared here as the
        model takes them: normalised, except for models that classify their length too)."""
        v = self.model.prepare_image_features(image_features.to(self.device))
        return self.model.classify_features(v)[0].float()

    def image_batch(self, images):
        """A tensor `[B, 3, H, W]` as it is, else a list of PIL images or paths, preprocessed."""
        if torch.is_tensor(images):
            return images
        return torch.stack([self.preprocess(_rgb(image)) for image in images])

    @torch.no_grad()
    def predict(self, images, topk=5):
        """Per image: {"top": [{"label", "class", "probability"}] (softmax of the logits, top
        `topk`), and for models that route "routing": [{"index", "template", "weight"}]}."""
        v = self.encode_image(self.image_batch(images))
        probs = self.logits(v).softmax(dim=-1)
        top = probs.topk(min(topk, len(self.classnames)), dim=-1)
        routing = self.route(v)
        results = []
        for b in range(v.shape[0]):
            labels = top.indices[b].tolist()
            result = {
                "top": [
                    {"label": c, "class": self.classnames[c], "probability": p}
                    for c, p in zip(labels, top.values[b].tolist())
                ]
            }
            if routing is not None:
                result["routing"] = [
                    {"index": g, "template": self.routing_names[g], "weight": w}
                    for g, w in zip(routing.index[b].tolist(), routing.weight[b].tolist())
                ]
            results.append(result)
        return results


def _rgb(image):
    """An RGB PIL image of a PIL image or a path, as training reads files (`clipprompt.images`)."""
    return to_rgb(image) if isinstance(image, Image.Image) else open_rgb(image)


def _put_clip_weights(module, learned, prefix):
    """Copy the learned tensors named `<prefix><name>` into `module`'s parameter `<name>`."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in learned.items():
            if not name.startswith(prefix):
                continue
            target = params.get(name[len(prefix) :])
            if target is None or target.shape != value.shape:
                raise ExportError(f"learned tensor {name} {list(value.shape)} does not fit this CLIP")
            target.copy_(value)


def _router(tensors):
    """The router or gate of a model that routes (its `router.*` tensors), or None."""
    state = {k.removeprefix("router."): v for k, v in tensors.items() if k.startswith("router.")}
    if not state:
        return None
    weight = state["weight"]
    router = Router(weight.shape[1], weight.shape[0], bias="bias" in state)
    router.linear.load_state_dict(state)
    return router
