"""clipprompt.checkpoints without Dassl: what is saved, what loads, and RNG states."""

import random

import numpy as np
import pytest
import torch

from clipprompt.checkpoints import (
    latest_checkpoint,
    learnable_parameters,
    learnable_state,
    load_learnable,
    read_checkpoint,
    rng_state,
    set_rng_state,
)


def small_model():
    model = torch.nn.Module()
    model.ctx = torch.nn.Parameter(torch.zeros(4, 8))
    model.router = torch.nn.Linear(8, 3)
    model.frozen = torch.nn.Linear(8, 8).requires_grad_(False)
    model.register_buffer("features", torch.ones(2))
    return model


def test_only_learnable_tensors_are_saved():
    model = small_model()
    assert list(learnable_parameters(model)) == ["ctx", "router.weight", "router.bias"]
    state = learnable_state(model)
    assert list(state) == ["ctx", "router.weight", "router.bias"]
    assert not state["ctx"].requires_grad and state["ctx"].data_ptr() != model.ctx.data_ptr()


def test_load_learnable_names_every_misfit():
    model = small_model()
    state = {"ctx": torch.ones(16, 8), "router.weight": torch.ones(3, 8), "extra": torch.ones(1)}
    with pytest.raises(RuntimeError) as err:
        load_learnable(model, state, "ckpt.pth")
    message = str(err.value)
    assert "ckpt.pth" in message
    assert "'ctx' has shape [16, 8] in the checkpoint but [4, 8]" in message
    assert "'router.bias' is missing" in message and "'extra' is in the checkpoint" in message
    good = {"ctx": torch.ones(4, 8), "router.weight": torch.ones(3, 8), "router.bias": torch.ones(3)}
    load_learnable(model, good, "x")
    assert model.ctx.sum() == 32 and model.router.bias.sum() == 3


def test_checkpoint_files_round_trip_with_weights_only(tmp_path):
    folder = tmp_path / "prompt_learner"
    folder.mkdir()
    torch.save({"state_dict": learnable_state(small_model()), "rng": rng_state()}, folder / "model.pth.tar-3")
    (folder / "checkpoint").write_text("model.pth.tar-3\n")
    path = latest_checkpoint(str(folder))
    assert path.endswith("model.pth.tar-3")
    assert set(read_checkpoint(path)["state_dict"]) == {"ctx", "router.weight", "router.bias"}


def test_missing_marker_and_pickled_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*'checkpoint' file"):
        latest_checkpoint(str(tmp_path))
    pickled = tmp_path / "model.pth.tar-1"
    torch.save({"scheduler": torch.optim.lr_scheduler.StepLR}, pickled)  # a class: not weights-only
    with pytest.raises(RuntimeError, match="(?s)Cannot read checkpoint .*pickle Python objects"):
        read_checkpoint(str(pickled))


def test_rng_state_restores_every_generator(tmp_path):
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
