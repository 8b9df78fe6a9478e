"""Linear-probe CLIP: the C search against a plain transcription of lpclip's (every round refits
both ends), the head against scikit-learn's predictions, and the trainer end to end through
train.py (few-shot run, its checkpoint and re-evaluation; base-to-new refused where a user would
ask for it)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from clipprompt.methods.linear_probe import C_GRID, LinearProbeCLIP, head_of, search_c
from tests.conftest import ROOT
from tests.e2e import PETS, TINY_OPTS, read_log, result_accuracy, run_train


def lpclip_reference(train, val, grid, steps):
    """lpclip/linear_probe.py's search written out plainly: (grid accuracies, [(left, right,
    chosen)], chosen C, its classifier), fitting both ends of every round anew."""

    def fit(c):
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(*train)

    def score(clf):
        pred = clf.predict(val[0])
        return sum(pred == val[1]) / len(val[1])

    accs = [score(fit(c)) for c in grid]
    peak = grid[int(np.argmax(accs))]
    left, right = 1e-1 * peak, 1e1 * peak
    rounds, chosen, clf = [], peak, fit(peak)
    for _ in range(steps):
        clf_left, clf_right = fit(left), fit(right)
        if score(clf_left) < score(clf_right):
            chosen, clf = right, clf_right
            left, right = 0.5 * (np.log10(right) + np.log10(left)), np.log10(right)
        else:
            chosen, clf = left, clf_left
            right, left = 0.5 * (np.log10(right) + np.log10(left)), np.log10(left)
        rounds.append(chosen)
        left, right = np.power(10, left), np.power(10, right)
    return accs, rounds, chosen, clf


def blobs(n_classes, per_class, dim=12, seed=0, spread=1.5):
    """Overlapping Gaussian classes, so that the validation accuracy depends on C."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    x = np.concatenate([centres[c] + spread * rng.normal(size=(per_class, dim)) for c in range(n_classes)])
    return x, np.repeat(np.arange(n_classes), per_class)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_search_is_lpclips(n_classes):
    train, val = blobs(n_classes, 8, seed=1), blobs(n_classes, 4, seed=2)
    accs, rounds, chosen, clf = lpclip_reference(train, val, C_GRID, 8)
    search = search_c(train, val, C_GRID, 8)
    assert search.grid_accuracies == pytest.approx(accs, abs=0)
    assert len(set(accs)) > 1, "the validation accuracy must depend on C, else the search is not tested"
    assert [r.chosen for r in search.rounds] == rounds and search.c == chosen
    np.testing.assert_array_equal(search.classifier.coef_, clf.coef_)
    np.testing.assert_array_equal(search.classifier.intercept_, clf.intercept_)


def test_without_rounds_the_grid_best_is_chosen():
    train, val = blobs(3, 6, seed=3), blobs(3, 4, seed=4)
    search = search_c(train, val, (1.0, 1e-3), steps=0)
    assert search.rounds == [] and search.c == (1.0, 1e-3)[int(np.argmax(search.grid_accuracies))]


@pytest.mark.parametrize("n_classes", [2, 4])
def test_head_predicts_as_scikit_learn(n_classes, tiny_clip):
    x, y = blobs(n_classes, 10, dim=tiny_clip.visual.output_dim, seed=5)
    clf = LogisticRegression(max_iter=1000, C=0.5).fit(x, y)
    model = LinearProbeCLIP(tiny_clip, n_classes)
    model.set_head(*head_of(clf, n_classes))
    with torch.no_grad():
        logits, routing = model.classify_features(torch.from_numpy(x).float())
    assert routing is None
    features = torch.from_numpy(x).float().double().numpy()  # as the model sees them: fp32 values
    np.testing.assert_array_equal(logits.argmax(dim=1).numpy(), clf.predict(features))
    np.testing.assert_allclose(
        logits.softmax(dim=1).numpy(), clf.predict_proba(features), rtol=1e-5, atol=1e-7
    )


def test_a_class_without_training_images_is_an_error():
    x, y = blobs(3, 4, seed=6)
    clf = LogisticRegression(max_iter=1000).fit(x[y != 1], y[y != 1])
    with pytest.raises(ValueError, match=r"labels \[1\] have no training image"):
        head_of(clf, 3)


# ---- the trainer through train.py ------------------------------------------------------------

needs_dassl = pytest.mark.skipif(
    importlib.util.find_spec("dassl") is None, reason="Dassl is not installed (see README set-up)"
)

CONFIG = "configs/trainers/LinearProbeCLIP/rn50.yaml"


def lp_args(root, clip_path, out, *extra):
    return [
        "--root", root, "--seed", 1, "--trainer", "LinearProbeCLIP", "--dataset-config-file", PETS,
        "--config-file", CONFIG, "--output-dir", out, "MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS,
        "DATASET.NUM_SHOTS", 4, *extra,
    ]  # fmt: skip


@needs_dassl
@pytest.mark.e2e
def test_fewshot_run_fits_saves_and_reevaluates(pets, tiny_clip_path, tmp_path):
    out = str(tmp_path / "fewshot")
    run_train(*lp_args(pets, tiny_clip_path, out))
    log = read_log(out)
    assert "Linear probe: 24 training and 12 validation features (32-d) of 6 classes" in log
    assert log.count("Search round ") == 8 and "Chosen C: " in log
    assert "Learnable tensors (198 values): head.weight, head.bias" in log
    accuracy = result_accuracy(log)
    ckpt = torch.load(os.path.join(out, "prompt_learner", "model.pth.tar-1"), weights_only=True)
    assert sorted(ckpt["state_dict"]) == ["head.bias", "head.weight"]
    assert (ckpt["epoch"], ckpt["max_epoch"], ckpt["trainer"]) == (1, 1, "LinearProbeCLIP")
    assert ckpt["state_dict"]["head.weight"].abs().sum() > 0

    run_train(*lp_args(pets, tiny_clip_path, out))  # a finished fit is evaluated, not refitted
    again = read_log(out).split("==== train.py start")[-1]
    assert "The head is fitted: evaluating it" in again and "Search round" not in again
    assert result_accuracy(again) == accuracy

    evaluated = str(tmp_path / "eval")
    run_train(*lp_args(pets, tiny_clip_path, evaluated), "--eval-only", "--model-dir", out)
    assert result_accuracy(read_log(evaluated)) == accuracy


@needs_dassl
@pytest.mark.e2e
def test_base_to_new_is_refused_before_anything_runs(pets, tiny_clip_path, tmp_path):
    out = tmp_path / "new"
    proc = run_train(
        *lp_args(pets, tiny_clip_path, str(out), "DATASET.SUBSAMPLE_CLASSES", "new"), check=False
    )
    assert proc.returncode != 0 and not out.exists()
    assert "base-to-new is not defined for LinearProbeCLIP" in proc.stderr
    env = {
        **os.environ,
        "DATA": pets,
        "OUTPUT": str(tmp_path / "output"),
        "SEEDS": "1",
        "PYTHON": sys.executable,
    }
    script = subprocess.run(
        ["bash", "scripts/base2new.sh", "oxford_pets", "LinearProbeCLIP", "rn50"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert script.returncode != 0
    assert "base-to-new is not defined for LinearProbeCLIP" in script.stderr
    assert not (tmp_path / "output" / "base2new" / "train_base" / "oxford_pets" / "shots_16").exists()
