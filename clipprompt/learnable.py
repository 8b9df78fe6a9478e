"""The learned tensors of a model: what training changes, what checkpoints and exported files
hold, and their strict loading.

Learned tensors are the parameters with `requires_grad` (prompts, routers, CLIP weights a method
trains); frozen CLIP weights and buffers computed from them are rebuilt, never stored.
"""

import torch


class CheckpointMismatch(RuntimeError):
    """Saved tensors (a checkpoint, an exported file) belong to another trainer, backbone,
    configuration or class list than the model they are loaded into."""


def learnable_parameters(model):
    """{name: parameter} of the tensors of `model` that training changes (no frozen CLIP
    weights, no buffers): what is optimised, saved and loaded."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def learnable_state(model):
    return {n: p.detach().cpu().clone() for n, p in learnable_parameters(model).items()}


def tensor_problems(model, state):
    """Why the learnable tensors `state` do not fit `model` (names, shapes), or []."""
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
    return problems


def load_learnable(model, state, source):
    """Load learnable tensors, refusing a checkpoint that does not fit the model."""
    problems = tensor_problems(model, state)
    if problems:
        raise CheckpointMismatch(
            f"Checkpoint {source} does not fit the model: "
            + "; ".join(problems)
            + ". Was it trained with another trainer or config (e.g. another number of experts, CSC, N_CTX)?"
        )
    with torch.no_grad():
        for n, p in learnable_parameters(model).items():
            p.copy_(state[n])
