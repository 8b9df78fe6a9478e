"""Checkpoints of learnable tensors and RNG states, readable with `torch.load(weights_only=True)`.

A checkpoint holds only the tensors training changes (`clipprompt.learnable`); frozen CLIP
weights and buffers computed from them are rebuilt from the config. With them go the plain
state of the optimiser, the schedule and the fp16 gradient scaler, and the RNG states (plain
tensors and tuples), so that a resumed run computes exactly what an uninterrupted one would,
and the identity of the model (`trainers.runs.identity`).

Files are written atomically (`clipprompt.atomic`): first the checkpoint, then the
`checkpoint` marker that names it, so a kill at any instant leaves the marker naming a
complete checkpoint.
"""

import glob
import os
import pickle
import random

import numpy as np
import torch

from clipprompt.atomic import atomic_file, write_text_atomically
from clipprompt.learnable import learnable_state, load_learnable, tensor_problems

from .identity import check_identity

MARKER = "checkpoint"
BEST = "model-best.pth.tar"


def save_checkpoint(state, folder, name=None):
    """Write `state` as `folder/name` atomically; without `name` as the epoch's
    `model.pth.tar-<epoch>`, which the `checkpoint` marker then names (resume reads it)."""
    path = os.path.join(folder, name or f"model.pth.tar-{state['epoch']}")
    with atomic_file(path, "wb") as f:
        torch.save(state, f)
    if name is None:
        write_text_atomically(os.path.join(folder, MARKER), os.path.basename(path) + "\n")
    print(f"Checkpoint saved to {path}")
    return path


def model_state(model):
    """The state beyond its parameters that `model` declares for resuming
    (`PromptedCLIP.training_state`), detached on the CPU; {} for models without any."""
    declared = model.training_state() if hasattr(model, "training_state") else {}
    return {name: value.detach().cpu().clone() for name, value in declared.items()}


def model_state_problems(model, saved):
    """Why the saved model state `saved` does not fit the state `model` declares, or []."""
    current = model_state(model)
    problems = [f"training state '{n}' is missing from the checkpoint" for n in current if n not in saved]
    problems += [
        f"training state '{n}' is in the checkpoint but not in this model" for n in saved if n not in current
    ]
    problems += [
        f"training state '{n}' has shape {list(saved[n].shape)} in the checkpoint but {list(v.shape)} in this model"
        for n, v in current.items()
        if n in saved and saved[n].shape != v.shape
    ]
    return problems


def training_state(model, optim, sched, scaler):
    """What a resumed run needs besides epoch counters and identity."""
    return {
        "state_dict": learnable_state(model),
        "model_state": model_state(model),
        "optimizer": optim.state_dict() if optim is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
    }


def restore_training_state(ckpt, model, optim, sched, scaler, source):
    """Inverse of `training_state`."""
    load_learnable(model, ckpt["state_dict"], source)
    if hasattr(model, "load_training_state"):
        model.load_training_state({name: value.clone() for name, value in ckpt["model_state"].items()})
    if optim is not None:
        optim.load_state_dict(ckpt["optimizer"])
    if sched is not None:
        sched.load_state_dict(ckpt["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])


def checkpoint_path(folder, epoch=None, best=False):
    """The checkpoint of `folder` to evaluate: `model-best.pth.tar` (best), that of `epoch`,
    or the newest (the `checkpoint` marker's)."""
    if best:
        path = os.path.join(folder, BEST)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No {path}: TEST.FINAL_MODEL best_val needs a run that validated")
        return path
    if epoch is None:
        return latest_checkpoint(folder)
    path = os.path.join(folder, f"model.pth.tar-{epoch}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint {path}: check --model-dir and --load-epoch")
    return path


def has_checkpoint(folder):
    return os.path.exists(os.path.join(folder, MARKER))


def epoch_checkpoints(folder):
    """{epoch: path} of the `model.pth.tar-<epoch>` files in `folder`."""
    found = {}
    for path in glob.glob(os.path.join(glob.escape(folder), "model.pth.tar-*")):
        suffix = path.rsplit("-", 1)[1]
        if suffix.isdigit():
            found[int(suffix)] = path
    return found


def recover_marker(folder):
    """When the `checkpoint` marker of `folder` is missing or names a file that is gone while
    epoch checkpoints are there (a copy that left the marker out, a damaged file deleted as its
    error says), write it again naming the newest checkpoint that loads, and say so; without
    one that loads, refuse. Training would otherwise start over and overwrite them."""
    marker = os.path.join(folder, MARKER)
    named = _marker_name(marker)
    if named is not None and os.path.exists(os.path.join(folder, named)):
        return
    why = f"names {named}, which is not there" if named is not None else "is missing"
    unreadable = []
    for epoch, path in sorted(epoch_checkpoints(folder).items(), reverse=True):
        try:
            read_checkpoint(path)
        except UnreadableCheckpoint:
            unreadable.append(os.path.basename(path))
            continue
        write_text_atomically(marker, os.path.basename(path) + "\n")
        skipped = f" ({', '.join(unreadable)} did not load)" if unreadable else ""
        print(
            f"The checkpoint marker {marker} {why}: resuming from the newest checkpoint that loads, "
            f"{os.path.basename(path)} (epoch {epoch}){skipped}; the marker now names it"
        )
        return
    if unreadable:
        raise UnreadableCheckpoint(
            f"The checkpoint marker {marker} {why}, and none of the checkpoints of {folder} loads "
            f"({', '.join(unreadable)}): move the folder away to train from scratch, or copy the run again"
        )


def read_checked(path, model, identity, same_classes=False):
    """The checkpoint at `path`, refused with one error unless it belongs to the model of
    `identity` and its tensors fit `model` (what cannot be checked is printed); resuming
    (`same_classes`) also needs the model's declared training state."""
    ckpt = read_checkpoint(path)
    problems = tensor_problems(model, ckpt["state_dict"])
    if same_classes:
        problems += model_state_problems(model, ckpt["model_state"])
    warning = check_identity(ckpt, identity, path, same_classes, problems)
    if warning:
        print(warning)
    return ckpt


def load_for_evaluation(models, directory, identity, epoch=None, best=False):
    """Load the learnable tensors of `models` ({name: module}, each saved in `directory/name`)
    from the checkpoint `checkpoint_path` picks, checked against `identity`; without an epoch it
    must come from a finished run. Returns the checkpoint's epoch."""
    for name, model in models.items():
        path = checkpoint_path(os.path.join(directory, name), epoch, best)
        ckpt = read_checked(path, model, identity)
        if epoch is None and not best and ckpt.get("epoch") != ckpt.get("max_epoch"):
            raise RuntimeError(
                f"{path} is from an unfinished run (epoch {ckpt.get('epoch')} of {ckpt.get('max_epoch')}): "
                "re-run its training command to resume it, or pass --load-epoch to use this epoch"
            )
        load_learnable(model, ckpt["state_dict"], path)
        print(f"Loaded {path} (epoch {ckpt['epoch']})")
    return ckpt["epoch"]


def resume_training(parts, scaler, directories, identity):
    """Restore `parts` ({name: (model, optimiser, schedule)}, each saved in `<directory>/name`)
    and `scaler` from the first of `directories` that holds a checkpoint of every part, checked
    against `identity` with the same class names. Returns (directory, finished epochs), or
    None when no directory holds one."""
    for d in filter(None, directories):
        for name in parts:
            recover_marker(os.path.join(d, name))
    directory = next(
        (d for d in directories if d and all(has_checkpoint(os.path.join(d, n)) for n in parts)), None
    )
    if directory is None:
        return None
    print(f"Found checkpoint in {directory}: resuming training")
    for name, (model, optim, sched) in parts.items():
        path = latest_checkpoint(os.path.join(directory, name))
        ckpt = read_checked(path, model, identity, same_classes=True)
        restore_training_state(ckpt, model, optim, sched, scaler, path)
        print(f"Resumed {path} (finished epochs: {ckpt['epoch']})")
    return directory, ckpt["epoch"]


def latest_checkpoint(folder):
    """Path of the newest checkpoint of `folder`, as its `checkpoint` marker names it."""
    marker = os.path.join(folder, MARKER)
    named = _marker_name(marker)
    epochs = sorted(epoch_checkpoints(folder))
    if named is not None and os.path.exists(os.path.join(folder, named)):
        return os.path.join(folder, named)
    why = f"names {named}, which is not there" if named is not None else "is missing"
    if not epochs and named is None:
        raise FileNotFoundError(
            f"No checkpoint in {folder} (expected a 'checkpoint' file written by training)"
        )
    if not epochs:
        raise FileNotFoundError(
            f"The checkpoint marker {marker} {why}, and {folder} holds no other checkpoint: move the "
            "run folder away to train from scratch"
        )
    raise FileNotFoundError(
        f"The checkpoint marker {marker} {why}, but {folder} holds the checkpoints of epochs "
        f"{', '.join(map(str, epochs))}: run the training command again (it resumes from the newest "
        "checkpoint that loads and writes the marker again), or pass --load-epoch"
    )


def _marker_name(marker):
    """The file name the `checkpoint` marker holds, or None when there is no marker."""
    if not os.path.exists(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        return f.readline().strip()


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint file torch cannot read with weights_only: damaged, incomplete, or pickling
    Python objects."""


def read_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a cut-off file gives a RuntimeError, an EOFError, an UnpicklingError ...
        raise UnreadableCheckpoint(_unreadable(path, err)) from err


def _unreadable(path, err):
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        return (
            f"Cannot read checkpoint {path}: it holds Python objects, not only tensors and plain values. "
            "Checkpoints of other CoOp-family repositories pickle Python objects and are not supported."
        )
    # torch's first sentence says what failed; the rest guesses at causes.
    detail = str(err).split(". ")[0] or "no data"
    return (
        f"Checkpoint {path} is damaged or incomplete ({type(err).__name__}: {detail}): delete it and run "
        "the training command again, which resumes from the newest checkpoint that loads (the previous "
        "epoch's) and trains this epoch again"
    )


def rng_state():
    """RNG states of torch, numpy and Python (and CUDA where present) as plain tensors and
    tuples (readable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
