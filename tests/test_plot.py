"""PLOT: the Sinkhorn plan against the released iterations read after every iteration (the
stopping rule read every CHECK_EVERY iterations gives the same plan), the logits, loss and
gradient against a straightforward computation with the plan held constant, the prompt features
against one encoding per prompt, fp32 transport under fp16 features and autocast, and the
global logit. Parity with the authors' code is in docs/BASELINES.md."""

import pytest
import torch
import torch.nn.functional as F

from clipprompt.methods.plot import (
    CHECK_EVERY,
    PLOTCLIP,
    FixedTransportCLIP,
    PromptSet,
    TransportOptions,
    sinkhorn_plan,
)
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm
from clipprompt.text_encoder import TextEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["abyssinian", "school bus", "globe_thistle"]


def released_sinkhorn(similarity, eps, max_iter, threshold):
    """(plan, iterations) of the released Sinkhorn iterations on `[P, M, N]` similarities: the
    stopping rule (mean |r - r_previous| over every problem below `threshold`) read after each."""
    kernel = torch.exp(-(1 - similarity) / eps)
    problems, m, n = similarity.shape
    dtype = similarity.dtype  # the released iterations run in the features' dtype
    u, v = torch.full((problems, m), 1 / m, dtype=dtype), torch.full((problems, n), 1 / n, dtype=dtype)
    r, c = torch.ones_like(u), torch.ones_like(v)
    for iteration in range(1, max_iter + 1):
        previous = r
        r = u / (kernel @ c[..., None]).squeeze(-1)
        c = v / (kernel.transpose(-1, -2) @ r[..., None]).squeeze(-1)
        if (r - previous).abs().mean().item() < threshold:
            break
    return r[..., :, None] * c[..., None, :] * kernel, iteration


def similarities(problems=12, m=7, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    local = F.normalize(torch.randn(problems, m, 16, generator=g), dim=-1)
    prompts = F.normalize(torch.randn(problems, n, 16, generator=g), dim=-1)
    return local @ prompts.transpose(1, 2)


def test_plan_is_the_released_rule_s_whatever_iteration_it_stops_at():
    similarity = similarities()
    stops = set()
    for eps in (1.0, 0.3, 0.2, 0.15, 0.1, 0.06, 0.04):
        expected, iterations = released_sinkhorn(similarity, eps, 100, 0.01)
        stops.add(iterations)
        torch.testing.assert_close(sinkhorn_plan(similarity, eps, 100, 0.01), expected, rtol=0, atol=0)
    # Before the first read, after it within a later block, and at the iteration limit.
    assert min(stops) < CHECK_EVERY < max(s for s in stops if s < 100) and 100 in stops


def test_plan_has_the_uniform_marginals_when_converged():
    plan = sinkhorn_plan(similarities(), 0.2, 1000, 1e-9)
    torch.testing.assert_close(plan.sum(dim=-1), torch.full(plan.shape[:-1], 1 / 7))
    torch.testing.assert_close(plan.sum(dim=-2), torch.full((12, 3), 1 / 3))


def test_fp16_similarities_are_transported_in_fp32():
    """Near-opposite features: exp(-(1 - S) / 0.1) underflows in fp16, where the released
    iterations (run in the model's fp16) divide by zero; here the plan stays finite."""
    similarity = (-0.95 - 0.05 * similarities().abs()).half()
    naive, _ = released_sinkhorn(similarity, 0.1, 100, 0.01)
    assert not torch.isfinite(naive).all()
    plan = sinkhorn_plan(similarity, 0.1, 100, 0.01)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    torch.testing.assert_close(plan, sinkhorn_plan(similarity.float(), 0.1, 100, 0.01), rtol=0, atol=0)


def fixed_model(tiny_clip, global_logits=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    prompts = F.normalize(torch.randn(4, len(CLASSES), 32, generator=g), dim=-1)
    pooled = F.normalize(torch.randn(len(CLASSES), 32, generator=g), dim=-1)
    return FixedTransportCLIP(tiny_clip, prompts, pooled, TransportOptions(global_logits=global_logits))


def images(n=5, seed=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_logits_are_the_transport_similarity(tiny_clip):
    model = fixed_model(tiny_clip)
    v = model.encode_image(images())
    assert v.shape == (5, 1 + 16, 32)  # the class token, then the 4 x 4 patch tokens of the tiny ViT
    prompts, _ = model.prompt_features()
    s = tiny_clip.logit_scale.exp()
    local = v[:, 1:]
    similarity = torch.stack([local[b] @ prompts[:, c].t() for b in range(5) for c in range(3)])
    plan, _ = released_sinkhorn(similarity, 0.1, 100, 0.01)
    expected = s * (plan * similarity).sum(dim=(1, 2)).view(5, 3)
    logits, routing = model.classify_features(v)
    assert routing is None
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)


def test_global_logit_adds_the_pooled_prompt_similarity(tiny_clip):
    with_global, without = fixed_model(tiny_clip, True), fixed_model(tiny_clip, False)
    v = with_global.encode_image(images())
    expected = tiny_clip.logit_scale.exp() * v[:, 0] @ with_global.fixed_pooled.t()
    difference = with_global.classify_features(v)[0] - without.classify_features(v)[0]
    torch.testing.assert_close(difference, expected, rtol=1e-5, atol=1e-5)


def test_autocast_leaves_the_transport_in_fp32(tiny_clip):
    model = fixed_model(tiny_clip, True)
    v = model.encode_image(images())
    plain = model.classify_features(v)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model.classify_features(v)[0]
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)


def plot_model(tiny_clip, n_prompts=3, position="end"):
    torch.manual_seed(0)
    prompts = PromptSet(CLASSES, tiny_clip.token_embedding, n_prompts, 4, position)
    with torch.no_grad():
        prompts.ctx.mul_(10)  # prompts that differ enough for the plan to matter
    return PLOTCLIP(tiny_clip, prompts, TextEncoder(tiny_clip), TransportOptions())


@pytest.mark.parametrize("position", ["end", "middle"])
def test_prompt_features_are_each_prompt_encoded_alone(tiny_clip, position):
    model = plot_model(tiny_clip, position=position)
    prompts, pooled = model.compute_text_features()
    reference = TextEncoder(tiny_clip, truncate=False, share_prefix=False, attention="math")
    form = PromptForm.coop(4, "", position)
    raw = []
    for n in range(3):
        one = PromptAssembler([form], CLASSES, tiny_clip.token_embedding, truncate=False)
        raw.append(reference(*one(model.prompt_learner.ctx[4 * n : 4 * n + 4])).float())
    raw = torch.stack(raw)
    torch.testing.assert_close(prompts, F.normalize(raw, dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, F.normalize(raw.mean(dim=0), dim=-1), rtol=1e-5, atol=1e-6)


def test_gradient_reaches_the_prompts_through_the_similarity_only(tiny_clip):
    model = plot_model(tiny_clip)
    image, label = images(), torch.tensor([0, 1, 2, 1, 0])
    terms, logits, _ = model.losses(image, label)
    terms["loss_ce"].backward()
    grad = model.prompt_learner.ctx.grad.clone()

    # The same loss with the plan computed beforehand and held constant.
    model.prompt_learner.ctx.grad = None
    v = model.encode_image(image)
    prompts, _ = model.compute_text_features()
    similarity = torch.einsum("bmd,ncd->bcmn", v[:, 1:], prompts)
    plan, _ = released_sinkhorn(similarity.detach().flatten(0, 1), 0.1, 100, 0.01)
    expected = tiny_clip.logit_scale.exp() * (plan.view_as(similarity) * similarity).sum(dim=(-2, -1))
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-5)
    F.cross_entropy(expected, label).backward()
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, model.prompt_learner.ctx.grad, rtol=1e-5, atol=1e-7)


def test_plot_needs_a_prompt(tiny_clip):
    with pytest.raises(ValueError, match="TRAINER.PLOT.N must be at least 1"):
        PromptSet(CLASSES, tiny_clip.token_embedding, 0, 4)


def test_prompt_work_is_the_n_by_c_prompts_in_one_call(tiny_clip):
    model = plot_model(tiny_clip)
    work = model.prompt_work(batch=8)
    assert work.assembler.num_rows == 3 * len(CLASSES) and work.rows is None and work.sets == 1
    expected = model.compute_text_features()
    for got, want in zip(work.encode(None), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
