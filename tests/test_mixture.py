"""MoCoOp's equations (clipprompt.methods.mocoop) against straightforward loop implementations."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipprompt.methods import mocoop as mixture

G, C, D, B = 3, 5, 8, 4
GROUPS = [[0], [1, 2], [3, 4, 5]]


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture
def tensors():
    torch.manual_seed(1)
    return {
        "v": unit(B, D),
        "soft": unit(G, C, D),
        "hard": unit(6, C, D),
        "scores": torch.randn(B, G, dtype=torch.float64),
        "label": torch.tensor([0, 3, 4, 1]),
    }


def test_validate_groups():
    assert mixture.validate_groups([1, 2, 3], list("abcdef")) == GROUPS
    with pytest.raises(ValueError, match="sum to the number of EXPERT_TEMPLATES"):
        mixture.validate_groups([1, 2], list("abcdef"))
    with pytest.raises(ValueError, match="empty"):
        mixture.validate_groups([], [])


def test_group_features(tensors):
    hard = tensors["hard"]
    prototypes, group_mean = mixture.group_features(hard, GROUPS)
    for g, idx in enumerate(GROUPS):
        for c in range(C):
            mean = sum(hard[i, c] for i in idx) / len(idx)
            torch.testing.assert_close(prototypes[g, c], mean / mean.norm())
        expected = sum(hard[i, c] for i in idx for c in range(C)) / (len(idx) * C)
        torch.testing.assert_close(group_mean[g], expected)


def test_expert_mixture_equals_mixed_text_features(tensors):
    v, soft, scale = tensors["v"], tensors["soft"], 100.0
    index, weight = torch.tensor([[0, 2], [1, 0], [2, 1], [1, 2]]), torch.rand(B, 2, dtype=torch.float64)
    logits = mixture.mix_expert_logits(v, soft, index, weight, scale)
    for b in range(B):
        for c in range(C):
            mixed = sum(weight[b, j] * soft[index[b, j], c] for j in range(2))  # t[x, c]
            assert math.isclose(logits[b, c].item(), scale * float(v[b] @ mixed), rel_tol=1e-9)


@pytest.mark.parametrize("mode", ["mean", "class"])
@pytest.mark.parametrize("boost, tau", [(0.0, 0.07), (10.0, 1.0)])
def test_router_target(tensors, mode, boost, tau):
    v, label = tensors["v"], tensors["label"]
    prototypes, group_mean = mixture.group_features(tensors["hard"], GROUPS)
    target = mixture.router_target(v, label, prototypes, group_mean, mode, boost, tau)
    for b in range(B):
        if mode == "mean":
            sim = [cos(v[b], group_mean[g]) for g in range(G)]
        else:
            sim = [cos(v[b], prototypes[g, label[b]]) for g in range(G)]
        for g in sorted(range(G), key=lambda g: -sim[g])[:2]:
            sim[g] += boost
        z = sum(math.exp(s / tau) for s in sim)
        assert target[b].tolist() == pytest.approx([math.exp(s / tau) / z for s in sim], rel=1e-9)
    assert not target.requires_grad


@pytest.mark.parametrize("direction", ["router_to_hard", "hard_to_router"])
def test_router_loss_is_the_chosen_kl(tensors, direction):
    scores = tensors["scores"]
    target = torch.softmax(torch.randn(B, G, dtype=torch.float64), dim=1)
    loss = mixture.router_loss(scores, target, direction)
    total = 0.0
    for b in range(B):
        p = [math.exp(s) for s in scores[b].tolist()]
        p = [x / sum(p) for x in p]
        q = target[b].tolist()
        if direction == "router_to_hard":
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        else:
            total += sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert loss.item() == pytest.approx(total / B, rel=1e-9)


def test_hard_to_router_has_the_gradient_of_the_releases_cross_entropy(tensors):
    target = torch.softmax(torch.randn(B, G, dtype=torch.float64), dim=1)
    a = tensors["scores"].clone().requires_grad_()
    mixture.router_loss(a, target, "hard_to_router").backward()
    b = tensors["scores"].clone().requires_grad_()
    F.cross_entropy(b, target).backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_text_loss_lasp(tensors, tau):
    soft, hard = tensors["soft"], tensors["hard"]
    loss = mixture.text_loss_lasp(soft, hard, GROUPS, tau)
    total = 0.0
    for g, idx in enumerate(GROUPS):
        for c in range(C):
            p = 0.0
            for i in idx:
                exps = [math.exp(cos(hard[i, c], soft[g, k]) / tau) for k in range(C)]
                p += exps[c] / sum(exps) / len(idx)
            total -= math.log(p)
    assert loss.item() == pytest.approx(total / (G * C), rel=1e-9)


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_text_loss_prototype(tensors, tau):
    soft = tensors["soft"]
    prototypes, _ = mixture.group_features(tensors["hard"], GROUPS)
    loss = mixture.text_loss_prototype(soft, prototypes, tau)
    total = 0.0
    for g in range(G):
        for c in range(C):
            exps = [math.exp(float(soft[g, c] @ prototypes[g, k]) / tau) for k in range(C)]
            total -= math.log(exps[c] / sum(exps))
    assert loss.item() == pytest.approx(total / (G * C), rel=1e-9)


def test_text_losses_pull_soft_features_towards_their_group():
    """At the group prototype the LASP loss is lower than at another group's prototype."""
    torch.manual_seed(0)
    hard = unit(6, C, D)
    prototypes, _ = mixture.group_features(hard, GROUPS)
    own = mixture.text_loss_lasp(prototypes, hard, GROUPS, 0.07)
    swapped = mixture.text_loss_lasp(prototypes.roll(1, dims=0), hard, GROUPS, 0.07)
    assert own < swapped
