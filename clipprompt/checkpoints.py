"""Checkpoints of learnable tensors and RNG states, readable with `torch.load(weights_only=True)`.

A checkpoint holds only the tensors training changes (`learnable_parameters`); frozen CLIP
weights and buffers computed from them are rebuilt from the config. RNG states are stored as
plain tensors and tuples, so that a resumed run draws the same random numbers as one that was
never interrupted.
"""

import os
import random

import numpy as np
import torch


def learnable_parameters(model):
    """{name: parameter} of the tensors of `model` that training changes (no frozen CLIP
    weights, no buffers): what is optimised, saved and loaded."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def learnable_state(model):
    return {n: p.detach().cpu().clone() for n, p in learnable_parameters(model).items()}


def load_learnable(model, state, source):
    """Load learnable tensors, refusing a checkpoint that does not fit the model."""
    expected = learnable_parameters(model)
    problems = [f"'{n}' is missing from the checkpoint" for n in expected if n not in state]
    problems += [
        f"'{n}' is in the checkpoint but not learnable in this model" for n in state if n not in expected
    ]
    problems += [
        f"'{n}' has shape {list(state[n].shape)} in the checkpoint but {list(p.shape)} in this model"
        for n, p in expected.items()
        if n in state and state[n].shape != p.shape
    ]
    if problems:
        raise RuntimeError(
            f"Checkpoint {source} does not fit the model: "
            + "; ".join(problems)
            + ". Was it trained with another trainer or config (e.g. another number of experts, CSC, N_CTX)?"
        )
    with torch.no_grad():
        for n, p in expected.items():
            p.copy_(state[n])


def latest_checkpoint(folder):
    """Path of the newest checkpoint of `folder`, as its `checkpoint` marker names it."""
    marker = os.path.join(folder, "checkpoint")
    if not os.path.exists(marker):
        raise FileNotFoundError(
            f"No checkpoint in {folder} (expected a 'checkpoint' file written by training)"
        )
    with open(marker) as f:
        return os.path.join(folder, f.readline().strip())


def read_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"Cannot read checkpoint {path} ({type(err).__name__}: {err}). Checkpoints of other "
            "CoOp-family repositories pickle Python objects and are not supported."
        ) from err


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
