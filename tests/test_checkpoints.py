"""trainers.runs.checkpoints and identity without Dassl: what is saved (atomically), what
loads, identities, RNG and gradient-scaler states, and the DETERMINISTIC switches."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from clipprompt.learnable import learnable_parameters, learnable_state, load_learnable
from tests.conftest import ROOT
from trainers.runs.checkpoints import (
    latest_checkpoint,
    read_checkpoint,
    restore_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
)
from trainers.runs.determinism import set_determinism
from trainers.runs.identity import (
    CheckpointMismatch,
    check_identity,
    identity_problems,
    make_identity,
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


# ----------------------------------------------------------------------------- identity


def identity(**changes):
    base = {
        "trainer": "CoOp",
        "backbone_name": "ViT-B/16",
        "fingerprint": "abc",
        "keys": {"TRAINER.COOP.N_CTX": 16, "TRAINER.COOP.CSC": False},
        "candidates": (),
        "classnames": ["cat", "dog"],
        "class_specific": False,
    }
    return make_identity(**{**base, **changes})


def test_identity_problems_name_both_sides():
    errors, unchecked = identity_problems(identity(), identity(trainer="KgCoOp", fingerprint="def"))
    assert errors == [
        "trainer CoOp (checkpoint) vs KgCoOp (this model)",
        "backbone 'ViT-B/16' with fingerprint abc (checkpoint) vs 'ViT-B/16' with fingerprint def (this model)",
    ]
    assert unchecked == []
    # The backbone is compared by fingerprint: a moved checkpoint file is the same CLIP.
    assert identity_problems(identity(), identity(backbone_name="/new/place/clip.pt")) == ([], [])


def test_class_names_matter_for_class_specific_tensors_and_for_resuming():
    new_classes = identity(classnames=["owl", "dog"])
    assert identity_problems(identity(), new_classes) == ([], [])
    errors, _ = identity_problems(identity(), new_classes, same_classes=True)
    assert errors == [
        "class names differ (resuming needs the same classes): label 0 is 'cat' (checkpoint) vs 'owl' (this model)"
    ]
    errors, _ = identity_problems(
        identity(class_specific=True), identity(class_specific=True, classnames=["cat"])
    )
    assert errors == [
        "class names differ (the tensors are class-specific): 2 classes (checkpoint) vs 1 (this model)"
    ]


def test_keys_recorded_on_one_side_are_reported_not_compared():
    newer = identity(keys={"TRAINER.COOP.N_CTX": 16, "TRAINER.COOP.CSC": False, "TRAINER.COOP.NEW": 1})
    assert identity_problems(identity(), newer) == ([], ["TRAINER.COOP.NEW"])
    warning = check_identity({"identity": identity()}, newer, "ckpt")
    assert "TRAINER.COOP.NEW recorded on one side only" in warning
    with pytest.raises(CheckpointMismatch, match=r"TRAINER.COOP.N_CTX 16 \(checkpoint\) vs 4 \(this model\)"):
        check_identity({"identity": identity()}, identity(keys={"TRAINER.COOP.N_CTX": 4}), "ckpt")


# ----------------------------------------------------------------------------- saving and resuming


def test_save_checkpoint_names_the_newest_epoch_but_never_the_best(tmp_path):
    folder = str(tmp_path / "prompt_learner")
    save_checkpoint({"epoch": 1}, folder)
    save_checkpoint({"epoch": 1}, folder, "model-best.pth.tar")
    assert latest_checkpoint(folder).endswith("model.pth.tar-1")
    assert sorted(os.listdir(folder)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1"]


# A process that saves epoch 1, then is SIGKILLed while epoch 2's checkpoint is written to disk
# (its bytes written, before the rename that publishes it).
KILLED_WHILE_SAVING = """
import os, signal, sys, torch
from trainers.runs.checkpoints import save_checkpoint
folder = sys.argv[1]
save_checkpoint({"epoch": 1, "state_dict": {"ctx": torch.ones(3)}}, folder)
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
save_checkpoint({"epoch": 2, "state_dict": {"ctx": torch.full((3,), 2.0)}}, folder)
"""


@pytest.mark.e2e
def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    folder = str(tmp_path / "prompt_learner")
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, folder], cwd=ROOT, check=False)
    assert proc.returncode == -9
    ckpt = read_checkpoint(latest_checkpoint(folder))
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["state_dict"]["ctx"], torch.ones(3))
    assert not os.path.exists(os.path.join(folder, "model.pth.tar-2"))


def test_training_state_round_trips_the_gradient_scaler():
    model = small_model()
    optim = torch.optim.SGD(learnable_parameters(model).values(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for factor in (1.0, float("inf")):  # a good step, then one with inf gradients (skipped)
        scaler.scale((model.ctx * factor).sum()).backward()
        scaler.step(optim)
        scaler.update()
        optim.zero_grad()
    state = training_state(model, optim, None, scaler)
    again = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    restore_training_state(state, small_model(), None, None, again, "ckpt")
    assert again.get_scale() == 512.0 and again.state_dict() == scaler.state_dict()


def test_deterministic_option_sets_every_switch():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        settings = set_determinism(True, cuda=False)
        assert settings == {
            "deterministic": True,
            "cudnn_deterministic": True,
            "cudnn_benchmark": False,
            "deterministic_algorithms": True,
            "cpu_threads": 1,
        }
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
        torch.backends.cudnn.deterministic = False


# ----------------------------------------------------------------------------- declared state


class AveragingModel(torch.nn.Module):
    """A model with state beyond its parameters: a running average of its prompt and a count."""

    def __init__(self, width=8):
        super().__init__()
        self.ctx = torch.nn.Parameter(torch.zeros(4, width))
        self.average = torch.zeros(4, width, dtype=torch.float64)
        self.steps = torch.zeros((), dtype=torch.long)

    def step(self, generator):
        with torch.no_grad():
            self.ctx.add_(torch.randn(self.ctx.shape, generator=generator))
            self.steps += 1
            self.average += (self.ctx.double() - self.average) / self.steps

    def training_state(self):
        return {"average": self.average, "steps": self.steps}

    def load_training_state(self, state):
        self.average, self.steps = state["average"], state["steps"]


def test_declared_training_state_resumes_exactly(tmp_path):
    """Interrupted after 3 of 6 steps and resumed from its checkpoint, the model ends with the
    same parameters and the same running average, bit for bit, as one that ran through."""
    from trainers.runs.checkpoints import resume_training

    straight = AveragingModel()
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        straight.step(g)

    first = AveragingModel()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        first.step(g)
    ident = identity(model_state=first.training_state())
    save_checkpoint(
        {**training_state(first, None, None, None), "epoch": 3, "identity": ident}, str(tmp_path / "m")
    )
    resumed = AveragingModel()
    found = resume_training({"m": (resumed, None, None)}, None, [str(tmp_path)], ident)
    assert found == (str(tmp_path), 3)
    # `g` stands for the RNG a resumed run restores: it continues where the first run stopped.
    for _ in range(3):
        resumed.step(g)
    assert torch.equal(resumed.ctx, straight.ctx)
    assert torch.equal(resumed.average, straight.average) and resumed.steps == 6


def test_declared_training_state_must_fit(tmp_path):
    from trainers.runs.checkpoints import resume_training

    model = AveragingModel()
    ident = identity(model_state=model.training_state())
    save_checkpoint(
        {**training_state(model, None, None, None), "epoch": 1, "identity": ident}, str(tmp_path / "m")
    )
    # Another model whose state has another shape, and one that declares none.
    with pytest.raises(
        CheckpointMismatch,
        match=r"training state 'average' has shape \[4, 8\] in the checkpoint but \[4, 6\]",
    ):
        resume_training({"m": (AveragingModel(width=6), None, None)}, None, [str(tmp_path)], ident)
    plain = small_model()
    with pytest.raises(
        CheckpointMismatch,
        match=r"training state \['average', 'steps'\] \(checkpoint\) vs \[\] \(this model\)",
    ):
        resume_training({"m": (plain, None, None)}, None, [str(tmp_path)], identity())
