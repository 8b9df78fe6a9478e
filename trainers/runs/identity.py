"""What a checkpoint of learnable tensors belongs to, and the check that it fits a model.

Tensor names and shapes alone do not tie a checkpoint to its model: a CoOp checkpoint has the
names and shapes of a KgCoOp one, prompts trained on ViT-B/16 fit ViT-B/32 (both 512 wide), and
class-specific contexts fit any class list of the same length. So every checkpoint carries an
identity, a plain dict (readable with `torch.load(weights_only=True)`) stored under "identity":

    {
        "version": 1,
        "trainer": "CoOp",
        "backbone": {                               # clip_loading.backbone_record
            "library": "openai",                    # or "open_clip"
            "name": "ViT-B/16",                     # MODEL.BACKBONE.NAME ("open_clip:ViT-B-16")
            "weights": "",                          # open_clip: tag, hf-hub: name or file
            "model_config": "",                     # open_clip: MODEL.BACKBONE.MODEL_CONFIG
            "fingerprint": "<clip_loading.backbone_fingerprint>",
        },
        "keys": {"TRAINER.COOP.N_CTX": 16, ...},    # config keys that define the tensors
        "candidates": ["a photo of a {}.", ...],    # routed experts / teachers, or []
        "classnames": ["abyssinian", ...],          # the model's classes, in label order
        "class_specific": False,                    # do the tensors depend on the classes?
        "model_state": [],                          # names of the model's declared training state
    }

`identity_problems` compares a checkpoint's identity with the one of the model it is loaded
into: the backbone is compared by fingerprint (the name or weights may be a path that moved;
checkpoints of an earlier version record only name and fingerprint), the class
names only where the tensors depend on them (so base -> new stays allowed for shared
contexts), unless `same_classes` asks for them (resuming a training run).
"""

from clipprompt.clip_loading import backbone_record
from clipprompt.learnable import CheckpointMismatch

IDENTITY_VERSION = 1


def plain(value):
    """Config values as JSON-like data (yacs keeps sequences as tuples or lists)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


def config_values(cfg, keys):
    """{"A.B": cfg.A.B} for dotted `keys` of a (yacs) config."""
    values = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def make_identity(
    trainer,
    backbone_name,
    fingerprint,
    keys,
    candidates,
    classnames,
    class_specific,
    model_state=(),
    weights="",
    model_config="",
):
    """The identity dict (module docstring); `keys` maps config keys to their values."""
    return {
        "version": IDENTITY_VERSION,
        "trainer": trainer,
        "backbone": backbone_record(backbone_name, fingerprint, weights, model_config),
        "keys": {key: plain(value) for key, value in keys.items()},
        "candidates": list(candidates),
        "classnames": list(classnames),
        "class_specific": bool(class_specific),
        "model_state": sorted(model_state),
    }


def _backbone(record):
    weights = f" with weights {record['weights']!r}" if record.get("weights") else ""
    return f"{record['name']!r}{weights} with fingerprint {record['fingerprint']}"


def _class_difference(saved, current):
    if len(saved) != len(current):
        return f"{len(saved)} classes (checkpoint) vs {len(current)} (this model)"
    label = next(i for i, (a, b) in enumerate(zip(saved, current)) if a != b)
    return f"label {label} is {saved[label]!r} (checkpoint) vs {current[label]!r} (this model)"


def identity_problems(saved, current, same_classes=False):
    """(errors, unchecked): what makes checkpoint identity `saved` unfit for the model of identity
    `current`, and what could not be compared (keys that one side does not record)."""
    errors, unchecked = [], []
    if saved["trainer"] != current["trainer"]:
        errors.append(f"trainer {saved['trainer']} (checkpoint) vs {current['trainer']} (this model)")
    old, new = saved["backbone"], current["backbone"]
    if old["fingerprint"] != new["fingerprint"]:
        errors.append(f"backbone {_backbone(old)} (checkpoint) vs {_backbone(new)} (this model)")
    for key in sorted(set(saved["keys"]) | set(current["keys"])):
        if key not in saved["keys"] or key not in current["keys"]:
            unchecked.append(key)
        elif saved["keys"][key] != current["keys"][key]:
            errors.append(
                f"{key} {saved['keys'][key]!r} (checkpoint) vs {current['keys'][key]!r} (this model)"
            )
    if saved["candidates"] != current["candidates"]:
        errors.append(
            f"routed candidates {saved['candidates']} (checkpoint) vs {current['candidates']} (this model); "
            "a model evaluated on another dataset needs DATASET.SOURCE_CONFIG of its training data"
        )
    if saved["model_state"] != current["model_state"]:
        errors.append(
            f"training state {saved['model_state']} (checkpoint) vs {current['model_state']} (this model)"
        )
    class_bound = same_classes or saved["class_specific"] or current["class_specific"]
    if class_bound and saved["classnames"] != current["classnames"]:
        why = "resuming needs the same classes" if same_classes else "the tensors are class-specific"
        errors.append(
            f"class names differ ({why}): {_class_difference(saved['classnames'], current['classnames'])}"
        )
    return errors, unchecked


def check_identity(checkpoint, current, source, same_classes=False, tensor_problems=()):
    """Raise CheckpointMismatch, naming both sides of every difference (and the `tensor_problems`
    of its tensors, found by the caller), unless the checkpoint dict `checkpoint` fits the model
    of identity `current`. Returns the warning to print for what could not be compared (keys
    that one side does not record), or None."""
    saved = checkpoint.get("identity")
    if saved is None:
        raise CheckpointMismatch(
            f"Checkpoint {source} records no identity: it was not written by this repository's "
            "train.py (every checkpoint it writes names its trainer, backbone and classes). Train "
            "the model with this repository, or point --model-dir at a run of it."
        )
    errors, unchecked = identity_problems(saved, current, same_classes)
    errors += list(tensor_problems)
    if errors:
        raise CheckpointMismatch(
            f"Checkpoint {source} does not fit the model: "
            + "; ".join(errors)
            + ". Load it with the trainer, backbone and config it was trained with (e.g. the same "
            "number of experts, CSC, N_CTX)."
        )
    if unchecked:
        return f"Warning: checkpoint {source}: {', '.join(unchecked)} recorded on one side only, not checked"
    return None
