import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from clipprompt.clip_loading import build_tiny_clip, save_clip_state_dict


@pytest.fixture(scope="session")
def tiny_clip():
    """A small random ViT CLIP in fp32 (frozen), shared by the session's tests."""
    model = build_tiny_clip()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory, tiny_clip):
    """The tiny CLIP saved as a plain state dict, loadable through MODEL.BACKBONE.NAME."""
    return save_clip_state_dict(tiny_clip, str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _run_from_repository_root():
    """Config paths in tests are relative to the repository root, as in README's commands."""
    previous = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(previous)
