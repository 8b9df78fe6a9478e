"""Linear-probe CLIP: Radford et al. "Learning Transferable Visual Models From Natural Language
Supervision". ICML 2021 (appendix A3), as CoOp's `lpclip` scripts run it for few-shot learning
(Zhou et al. "Learning to Prompt for Vision-Language Models". IJCV 2022).

A logistic regression on the frozen image tower's output (CLIP's projected image feature, not
normalised), fitted by scikit-learn (lbfgs, L2, at most `max_iter` iterations). Its inverse
regularisation strength C is chosen on the validation images as lpclip chooses it: the
validation accuracy of each C of a coarse grid, then rounds of a binary search in log10(C)
between a tenth and ten times the grid's best; each round fits both ends, keeps the better one
(the smaller C on a tie) as one end of the next interval and the midpoint as the other. The
last round's winner is the classifier. A fit is made once per value of C (lpclip refits the
kept end every round; the fit is deterministic, so the result is the same).

The classifier is a linear head `[C, D]` on the image features; it has weights only for the
classes it was fitted on, so unlike a prompt it cannot classify classes it did not see
(base-to-new is not defined for it). Its exported file (kind "linear_head") keeps the head.
scikit-learn is needed to fit, not to classify.
"""

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..learnable import load_learnable
from ..model import PromptedCLIP, exported_kind

# lpclip's coarse grid of C (CLIP paper, appendix A3), searched in this order.
C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


class SearchRound(NamedTuple):
    left: float  # the interval's ends, values of C
    right: float
    left_accuracy: float  # validation accuracy (fraction) of the classifier at each end
    right_accuracy: float
    chosen: float  # the better end (the left one on a tie)


class Search(NamedTuple):
    grid_accuracies: list  # validation accuracy of each C of the grid, in grid order
    rounds: list  # SearchRound per round of the binary search
    c: float  # the chosen C: the last round's winner (the grid's best without rounds)
    classifier: object  # the fitted scikit-learn LogisticRegression of that C
    unconverged: list  # the values of C whose fit stopped at max_iter before converging


def accuracy(classifier, features, labels):
    """Fraction of `features` whose predicted class is their label (lpclip's validation score)."""
    return float(np.mean(classifier.predict(features) == labels))


class LogisticFits:
    """scikit-learn fits of one training set, made once per value of C."""

    def __init__(self, features, labels, max_iter):
        self.features, self.labels, self.max_iter = features, labels, max_iter
        self.fits, self.unconverged = {}, []

    def __call__(self, c):
        if c not in self.fits:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.linear_model import LogisticRegression

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                classifier = LogisticRegression(solver="lbfgs", max_iter=self.max_iter, C=c)
                self.fits[c] = classifier.fit(self.features, self.labels)
            if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                self.unconverged.append(c)
        return self.fits[c]


def search_c(train, val, grid=C_GRID, steps=8, max_iter=1000):
    """The `Search` of C for training and validation (features, labels) pairs of numpy arrays,
    as lpclip/linear_probe.py searches (module docstring)."""
    fit = LogisticFits(*train, max_iter)
    grid_accuracies = [accuracy(fit(c), *val) for c in grid]
    peak = grid[int(np.argmax(grid_accuracies))]
    # The same arithmetic as lpclip: values pass through log10 and back every round.
    left, right, chosen = 1e-1 * peak, 1e1 * peak, peak
    rounds = []
    for _ in range(steps):
        left_accuracy, right_accuracy = accuracy(fit(left), *val), accuracy(fit(right), *val)
        middle = 0.5 * (np.log10(right) + np.log10(left))
        if left_accuracy < right_accuracy:
            chosen, next_left, next_right = right, middle, np.log10(right)
        else:
            chosen, next_left, next_right = left, np.log10(left), middle
        rounds.append(SearchRound(left, right, left_accuracy, right_accuracy, chosen))
        left, right = np.power(10, next_left), np.power(10, next_right)
    return Search(grid_accuracies, rounds, chosen, fit(chosen), fit.unconverged)


def head_of(classifier, num_classes):
    """(weight `[C, D]`, bias `[C]`) float64 of a fitted LogisticRegression over labels
    0 .. num_classes - 1. A two-class fit has one weight vector w: the head is [0, w], whose
    argmax is class 1 exactly where scikit-learn predicts it (w·x + b > 0)."""
    classes = list(classifier.classes_)
    if classes != list(range(num_classes)):
        missing = sorted(set(range(num_classes)) - set(classes))
        raise ValueError(
            f"the linear probe was fitted on labels {classes[:10]}, not on every one of 0 .. {num_classes - 1} "
            f"(labels {missing[:10]} have no training image): every class needs a training image"
        )
    weight = torch.as_tensor(classifier.coef_, dtype=torch.float64)
    bias = torch.as_tensor(classifier.intercept_, dtype=torch.float64)
    if num_classes == 2:
        weight, bias = (
            torch.cat([torch.zeros_like(weight), weight]),
            torch.cat([torch.zeros_like(bias), bias]),
        )
    return weight, bias


@exported_kind
class LinearProbeCLIP(PromptedCLIP):
    """A linear head on CLIP's unnormalised image features; logits `W v + b`, computed in float64
    as scikit-learn computes them. Fitted by `search_c` and `set_head`, not by gradient steps
    (its `losses` is the cross-entropy of the head, for the model interface)."""

    export_kind = "linear_head"

    def __init__(self, clip_model, num_classes):
        super().__init__(clip_model)
        # Zero until fitted: every class equally likely.
        self.head = nn.Linear(clip_model.visual.output_dim, num_classes, dtype=torch.float64)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def prepare_image_features(self, features):
        """The image tower's output as it is (fp32): the probe was fitted on unnormalised features."""
        return features.float()

    def classify_features(self, image_features):
        return self.head(image_features.to(torch.float64)).float(), None

    def set_head(self, weight, bias):
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    @classmethod
    def export_shapes(cls, metadata, width):
        from ..exported import LEARNED

        classes = len(metadata["classnames"])
        return {LEARNED + "head.weight": (classes, width), LEARNED + "head.bias": (classes,)}

    @classmethod
    def from_export(cls, clip_model, tensors, metadata, router):
        """The classifier of an exported file of kind "linear_head": its head loaded."""
        from ..exported import LEARNED

        model = cls(clip_model, len(metadata["classnames"]))
        learned = {k[len(LEARNED) :]: v for k, v in tensors.items() if k.startswith(LEARNED)}
        load_learnable(model, learned, "the exported file")
        return model
