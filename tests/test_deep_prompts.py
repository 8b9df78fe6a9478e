"""IVLP and MaPLe (clipprompt.methods.ivlp, .maple; trainers/ivlp.py, maple.py): the prompt layout
of the released code (the words after the learnable tokens stay text), text and image features
against CLIP's own forward passes with the tokens written in, MaPLe's couplings, one error for a
ResNet backbone or prompts deeper than a tower, and the configs against the released recipes.
Both methods' parity with the authors' code is in docs/BASELINES.md; the speed options with deep
prompts are in test_speed_options.py, the trainers' contract in test_contract.py."""

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from clipprompt.clip_loading import build_tiny_clip, clip
from clipprompt.methods.ivlp import deep_prompt_form
from clipprompt.templates import TemplateError, bpe
from clipprompt.towers import DeepTextPrompts, encode_image
from tests.test_towers import clip_text_reference
from tools.interpret import layout
from trainers import build_trainer, make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

PETS = "configs/datasets/oxford_pets.yaml"
CLASSES = ["abyssinian", "great pyrenees mountain dog", "dog"]
IVLP = "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml"
MAPLE = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"
TINY = ["INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32"]


def build(trainer, config, clip_model, opts=()):
    torch.manual_seed(0)
    cfg = make_cfg(trainer, PETS, config, [*TINY, *opts])
    return build_trainer(cfg, CLASSES, clip_model=clip_model)


def perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_the_words_after_the_learnable_tokens_stay_text():
    two = deep_prompt_form(2, "a photo of a")
    assert (two.init_ids, two.fixed_ids) == (tuple(bpe("a photo")), tuple(bpe("of a")))
    ids, is_ctx = two.token_row("dog")
    assert ids[1:6] == [0, 0, *bpe("of a dog")]
    assert is_ctx[:6] == [False, True, True, False, False, False]
    assert layout(two) == "V1 V2 of a {class} ."
    four = deep_prompt_form(4, "a photo of a")
    assert (four.init_ids, four.fixed_ids) == (tuple(bpe("a photo of a")), ())
    assert deep_prompt_form(3, "").init_ids is None
    with pytest.raises(TemplateError, match="CTX_INIT 'a photo of a' has 4 BPE tokens"):
        deep_prompt_form(5, "a photo of a")


def clip_prompt_reference(clip_model, prompt_learner, n):
    """Text features of "a photo of a <class>." through CLIP's own 77-token text blocks, its
    first n tokens replaced by the layer-0 context and, before each next block, by the deep
    tokens."""
    tokens = clip.tokenize([f"a photo of a {c}." for c in CLASSES])
    embeddings = clip_model.token_embedding(tokens).clone()
    embeddings[:, 1 : 1 + n] = prompt_learner.ctx
    deep = DeepTextPrompts(prompt_learner.deep_text, torch.arange(1, n + 1))
    return clip_text_reference(clip_model, embeddings, tokens.argmax(dim=-1), deep)


@pytest.mark.parametrize("trainer, config, opts, image_depth", [
    ("IVLP", IVLP, ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 2], 2),
    ("MaPLe", MAPLE, ["TRAINER.MAPLE.PROMPT_DEPTH", 2], 2),
    ("IVLP", IVLP, ["TRAINER.IVLP.N_CTX_TEXT", 4, "TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 1], 1),
])  # fmt: skip
def test_features_are_clips_forward_passes_with_the_prompts_written_in(
    trainer, config, opts, image_depth, tiny_clip
):
    model = build(trainer, config, tiny_clip, opts).model
    perturb(model)
    prompts = model.prompt_learner
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        text = model.text_encoder(*prompts())
        reference = clip_prompt_reference(tiny_clip, prompts, prompts.ctx.shape[0])
        torch.testing.assert_close(text, reference, atol=1e-5, rtol=1e-5)
        image_prompts = prompts.image_prompts()
        assert image_prompts.shape[0] == image_depth
        features = encode_image(tiny_clip.visual, image, image_prompts).features
        torch.testing.assert_close(model.encode_image(image), features / features.norm(dim=-1, keepdim=True))
        assert not torch.allclose(features, tiny_clip.encode_image(image), atol=1e-3)


def test_maple_couples_each_layers_image_prompts_to_its_text_prompts(tiny_clip):
    prompts = build("MaPLe", MAPLE, tiny_clip, ["TRAINER.MAPLE.PROMPT_DEPTH", 2]).model.prompt_learner
    first, deeper = prompts.couplings
    assert first.weight.shape == (64, 64)  # tiny CLIP: text width 64 -> image width 64
    # As released: the deeper couplings start as copies of one layer, the first one is its own.
    assert not torch.equal(first.weight, deeper.weight)
    torch.manual_seed(0)
    three = build_trainer(
        make_cfg("MaPLe", PETS, MAPLE, [*TINY, "TRAINER.MAPLE.PROMPT_DEPTH", 3]),
        CLASSES,
        clip_model=build_tiny_clip(vision_layers=3, transformer_layers=3),
    ).model.prompt_learner
    assert torch.equal(three.couplings[1].weight, three.couplings[2].weight)
    perturb(prompts)
    with torch.no_grad():
        expected = torch.stack([first(prompts.ctx), deeper(prompts.deep_text[0])])
        torch.testing.assert_close(prompts.image_prompts(), expected, atol=0, rtol=0)


@pytest.fixture(scope="module")
def resnet():
    model = build_tiny_clip(vision_layers=(1, 1, 1, 1), vision_width=64, image_resolution=32)
    return model.requires_grad_(False)


@pytest.mark.parametrize("trainer, config", [
    ("IVLP", IVLP), ("MaPLe", MAPLE), ("PromptSRC", "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"),
])  # fmt: skip
def test_a_resnet_backbone_gets_one_clear_error(trainer, config, resnet):
    with pytest.raises(ValueError, match="has a ResNet image tower: use a ViT backbone such as ViT-B/16"):
        build(trainer, config, resnet)


def test_language_only_prompts_run_on_a_resnet(resnet):
    config = "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml"
    model = build("IVLP", config, resnet, ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2]).model
    assert model.prompt_learner.image_prompts() is None
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(image), torch.nn.functional.normalize(resnet.encode_image(image))
        )


def test_prompts_deeper_than_a_tower_and_inconsistent_keys_are_refused(tiny_clip):
    with pytest.raises(ValueError, match="TRAINER.MAPLE.PROMPT_DEPTH 9 is deeper than the 2 blocks"):
        build("MaPLe", MAPLE, tiny_clip)
    with pytest.raises(ValueError, match="TRAINER.IVLP.PROMPT_DEPTH_VISION 3 is deeper than the 2 blocks"):
        build(
            "IVLP",
            IVLP,
            tiny_clip,
            ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 3],
        )
    with pytest.raises(ValueError, match="set both to 0 for language-only prompts"):
        make_cfg("IVLP", PETS, IVLP, ["TRAINER.IVLP.N_CTX_VISION", 0])


# The released recipes (muzairkhattak/multimodal-prompt-learning and muzairkhattak/PromptSRC,
# configs/trainers/*): batch 4, test batch 100, ViT-B/16 and these keys.
RELEASED = {
    "IVLP/vit_b16_c2_ep5_batch4_2+2ctx": (0.0035, 5, {"N_CTX_TEXT": 2, "N_CTX_VISION": 2, "PROMPT_DEPTH_TEXT": 12, "PROMPT_DEPTH_VISION": 12}),
    "IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only": (0.0025, 5, {"N_CTX_TEXT": 4, "N_CTX_VISION": 0, "PROMPT_DEPTH_TEXT": 12, "PROMPT_DEPTH_VISION": 0}),
    "IVLP/vit_b16_c2_ep20_batch4_4+4ctx": (0.0025, 20, {"N_CTX_TEXT": 4, "N_CTX_VISION": 4, "PROMPT_DEPTH_TEXT": 9, "PROMPT_DEPTH_VISION": 9}),
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx": (0.0035, 5, {"N_CTX": 2, "PROMPT_DEPTH": 9}),
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets": (0.0026, 2, {"N_CTX": 2, "PROMPT_DEPTH": 3}),
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx": (0.0025, 20, {"PROMPT_DEPTH_TEXT": 9, "GPA_MEAN": 15, "GPA_STD": 1}),
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets": (0.0025, 20, {"PROMPT_DEPTH_TEXT": 3, "PROMPT_DEPTH_VISION": 3, "GPA_MEAN": 6, "GPA_STD": 10}),
    "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot": (0.0025, 50, {"PROMPT_DEPTH_TEXT": 9, "GPA_MEAN": 30, "GPA_STD": 30}),
    "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot/dtd": (0.0025, 50, {"GPA_MEAN": 45, "GPA_STD": 5}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RELEASED))
def test_configs_are_the_released_recipes(name):
    trainer = name.split("/")[0]
    cfg = make_cfg(trainer, PETS, f"configs/trainers/{name}.yaml")
    lr, epochs, keys = RELEASED[name]
    assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (lr, epochs, 4)
    assert (cfg.DATALOADER.TEST.BATCH_SIZE, cfg.MODEL.BACKBONE.NAME) == (100, "ViT-B/16")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_CONS_LR) == (1, 1e-5)
    node = cfg.TRAINER[trainer.upper()]
    assert node.CTX_INIT == "a photo of a"
    for key, value in keys.items():
        assert node[key] == value, key
    if trainer == "PromptSRC":
        assert (node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT, node.TEMPLATES) == (25, 10, "promptsrc60")
