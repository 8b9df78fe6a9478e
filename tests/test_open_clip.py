"""open_clip backbones (clipprompt.open_clip_backbone, the towers over open_clip's models) on
tiny random models built from JSON model configs (tests/open_clip_models.py; no download):

- zero-shot text and image features equal open_clip's own `encode_text` / `encode_image` (fp32,
  1e-5 of their scale) for a causal BPE model, one with LayerScale and a SigLIP-style one (its
  own tokenizer, bidirectional attention, last-position pooling, projection bias, logit bias);
- prompts are assembled in the model's tokenizer;
- per-layer text and image prompts equal open_clip's own blocks with the tokens written in;
- what cannot run exactly is refused with one error: truncation and the shared prefix on a
  SigLIP text tower, timm image towers for prompts and local features, Hugging Face text
  encoders, CoCa, custom attention blocks;
- weights: a missing or wrong file, an unknown tag, a tag trained with another activation, a
  weights file that is not cached and cannot be downloaded, each gives one error saying what to
  do; a cached file is read without the network;
- a checkpoint of one backbone is refused by a model on another.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from clipprompt.clip_loading import CheckpointError, backbone_fingerprint, load_clip
from clipprompt.open_clip_backbone import OpenCLIPSource, build_open_clip
from clipprompt.open_clip_weights import resolve_weights
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm
from clipprompt.text_encoder import TextEncoder, UnsupportedSpeedOption, encode_texts
from clipprompt.towers import DeepTextPrompts, UnsupportedTower, encode_image, text_tower
from tests.open_clip_models import CONFIGS

KINDS = ("causal", "layerscale", "bidirectional", "siglip")
TEXTS = [
    "a photo of a dog.",
    "a photo of a great pyrenees mountain dog, a type of pet.",
    "itap of the large yellow school bus.",
    "x.",
]
CLASSES = ["dog", "great pyrenees mountain dog", "school bus", "x"]

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_relative(actual, expected, what=""):
    """Within 1e-5 of the reference's largest value."""
    error, scale = (actual - expected).abs().max(), expected.abs().max()
    assert actual.shape == expected.shape and error <= 1e-5 * scale, (
        f"{what}: {error:.3g} > 1e-5 x {scale:.3g}"
    )


def own_tokens(model, texts):
    """open_clip's own tokenizer of the model (its open_clip object, as get_tokenizer builds it)."""
    return model.clipprompt_backbone.own_tokenizer(texts)


def images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def exact_encoder(model, **options):
    """The default speed options where the tower allows them, else its reference path."""
    exact = text_tower(model).prefix_exact
    return TextEncoder(model, truncate=exact, share_prefix=exact, **options)


# ---------------------------------------------------------------- zero-shot features


@pytest.mark.parametrize("kind", KINDS)
def test_zero_shot_features_equal_open_clips_own(kind, tiny_open_clip):
    _, model = tiny_open_clip(kind)
    encoder = exact_encoder(model)
    with torch.no_grad():
        ours = encode_texts(encoder, encoder.token_embedding, TEXTS, normalize=False, groups=[0, 0, 1, 1])
        theirs = model.encode_text(own_tokens(model, TEXTS))
        assert_relative(ours, theirs, "text features")
        x = images()
        assert torch.equal(encode_image(model.visual, x).features, model.encode_image(x))
        assert_relative(encode_image(model.visual, x, local=True).features, model.encode_image(x), "ViT path")
    assert text_tower(model).prefix_exact == (kind in ("causal", "layerscale"))


def test_the_siglip_style_tower_reads_its_own_tokens_and_bias(tiny_open_clip):
    _, model = tiny_open_clip("siglip")
    tower = text_tower(model)
    assert not tower.causal and tower.tokenizer.pool == "last" and not tower.tokenizer.is_clip_bpe
    assert tower.tokenizer.before == () and tower.tokenizer.after == (1,) and tower.tokenizer.pad_id == 0
    assert isinstance(tower.projection, torch.nn.Linear) and tower.projection.bias is not None
    assert model.logit_bias.item() == -10


@pytest.mark.parametrize("kind", ["layerscale", "siglip"])
def test_prompts_are_assembled_in_the_models_tokenizer(kind, tiny_open_clip):
    """A CoOp prompt initialised from words, its context filled with their ids, is the model's own
    tokenization of the text; its features are open_clip's."""
    _, model = tiny_open_clip(kind)
    tower = text_tower(model)
    form = PromptForm.coop(4, "a photo of a", tokenizer=tower.tokenizer)
    assert form.init_ids == tuple(tower.tokenizer.encode("a photo of a"))
    exact = tower.prefix_exact
    assembler = PromptAssembler(
        [form], CLASSES, tower.token_embedding, truncate=exact, tokenizer=tower.tokenizer
    )
    ids = assembler.token_ids.clone()
    ids[assembler.slot_ids >= 0] = torch.tensor(form.init_ids).repeat(len(CLASSES))
    theirs = own_tokens(model, [f"a photo of a {c}." for c in CLASSES])
    assert torch.equal(ids, theirs[:, : ids.shape[1]]) and (theirs[:, ids.shape[1] :] == 0).all()
    with torch.no_grad():
        feats = exact_encoder(model)(*assembler(assembler.init_table()))
        assert_relative(feats, model.encode_text(theirs), "prompt features")


def test_interpretation_decodes_in_the_models_vocabulary(tiny_open_clip):
    from tools.interpret import decode

    tokenizer = text_tower(tiny_open_clip("siglip")[1]).tokenizer
    (dog,) = tokenizer.encode("dog")
    assert decode(dog, tokenizer) == ("dog", "dog") and decode(1, tokenizer) == ("</s>", "</s>")
    assert decode(1929) == ("dog</w>", "dog")  # CLIP's BPE by default


def test_context_length_is_counted_in_the_models_tokens(tiny_open_clip):
    _, model = tiny_open_clip("siglip")
    tower = text_tower(model)
    # The SigLIP-style cleaning drops punctuation: ", a type of flower." has 4 word tokens.
    form = PromptForm.from_template("a photo of a {}, a type of flower.", tower.tokenizer)
    assert (form.n_before, form.n_after) == (4, 4)
    with pytest.raises(ValueError, match="more than the text tower's 32 positions"):
        PromptAssembler(
            [PromptForm.coop(40)], ["dog"], tower.token_embedding, truncate=False, tokenizer=tower.tokenizer
        )


# ---------------------------------------------------------------- per-layer prompts


def open_clip_text_reference(model, embeddings, eot, deep):
    """Prompt embeddings `[N, L, w]` through open_clip's own text blocks (batch first, with its
    attention mask), the deep tokens written in before each of the next blocks."""
    tower = text_tower(model)
    text = getattr(model, "text", model)
    x = embeddings + tower.positional_embedding[: embeddings.shape[1]]
    mask = None if text.attn_mask is None else text.attn_mask[: x.shape[1], : x.shape[1]]
    for index, block in enumerate(tower.blocks):
        tokens = deep.at_block(index)
        if tokens is not None:
            x = x.clone()
            x[:, deep.positions] = tokens
        x = block(x, attn_mask=mask)
    return tower.project(tower.ln_final(x)[torch.arange(x.shape[0]), eot])


@pytest.mark.parametrize("kind", ["layerscale", "siglip"])
def test_deep_text_prompts_equal_open_clips_blocks(kind, tiny_open_clip):
    _, model = tiny_open_clip(kind)
    tower = text_tower(model)
    forms = [PromptForm.coop(4, "a photo of a", tokenizer=tower.tokenizer)]
    exact = tower.prefix_exact
    assembler = PromptAssembler(
        forms, CLASSES, tower.token_embedding, truncate=exact, tokenizer=tower.tokenizer
    )
    g = torch.Generator().manual_seed(2)
    positions = (
        (assembler.slot_ids[0] >= 0).nonzero().squeeze(1)
    )  # after SOT in CLIP's BPE, first in SigLIP's
    deep = DeepTextPrompts(0.1 * torch.randn(1, 4, 64, generator=g), positions)
    table = assembler.init_table()
    with torch.no_grad():
        ours = exact_encoder(model, chunk_size=3)(*assembler(table), deep=deep)
        embeds, eot, _ = assembler(table)
        assert_relative(ours, open_clip_text_reference(model, embeds, eot, deep), "deep prompts")
        assert not torch.allclose(ours, exact_encoder(model)(*assembler(table)), atol=1e-4)


def test_vit_prompts_per_layer_equal_open_clips_forward_with_them_inserted(tiny_open_clip):
    _, model = tiny_open_clip("layerscale")
    visual, x = model.visual, images()
    prompts = 0.1 * torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(1))
    n = prompts.shape[1]
    hooks = [
        visual.ln_pre.register_forward_pre_hook(
            lambda m, a: (torch.cat([a[0], prompts[0].expand(a[0].shape[0], n, -1)], 1),)
        ),
        visual.transformer.resblocks[1].register_forward_pre_hook(
            lambda m, a: (torch.cat([a[0][:, :-n], prompts[1].expand(a[0].shape[0], n, -1)], 1),)
        ),
    ]
    try:
        with torch.no_grad():
            reference = visual(x)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        ours = encode_image(visual, x, prompts)
        assert_relative(ours.features, reference, "image prompts")
        local = encode_image(visual, x, local=True).local
    assert local.shape == (3, 16, 32)


# ---------------------------------------------------------------- what is refused


def test_truncation_and_the_shared_prefix_are_refused_on_a_siglip_tower(tiny_open_clip):
    _, model = tiny_open_clip("siglip")
    with pytest.raises(UnsupportedSpeedOption) as err:
        TextEncoder(model)
    message = str(err.value)
    assert "truncate and share_prefix would change the text features of open_clip:tiny-siglip" in message
    assert "its attention is not causal" in message and "'last' position" in message
    assert "Set truncate False and share_prefix False" in message
    TextEncoder(model, truncate=False, share_prefix=False, attention="math", chunk_size=2)


def build_config(kind, **changes):
    config = copy.deepcopy(CONFIGS[kind])
    for path, value in changes.items():
        node = config
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def test_towers_that_cannot_run_exactly_are_refused():
    source = OpenCLIPSource("tiny")
    with pytest.raises(
        CheckpointError, match="Hugging Face model roberta-base: prompts need a CLIP text transformer"
    ):
        build_open_clip(build_config("causal", **{"text_cfg.hf_model_name": "roberta-base"}), source)
    with pytest.raises(CheckpointError, match="CoCa model"):
        build_open_clip({**CONFIGS["causal"], "multimodal_cfg": {}}, source)
    custom = build_open_clip(build_config("causal", **{"text_cfg.qk_norm": True}), source)
    with pytest.raises(UnsupportedTower, match="only CLIP's residual attention blocks"):
        text_tower(custom)


def test_a_timm_image_tower_runs_only_as_open_clip_runs_it():
    vision = {
        "image_size": 224,
        "timm_model_name": "vit_tiny_patch16_224",
        "timm_pool": "token",
        "timm_proj": "linear",
    }
    model = build_open_clip(
        build_config("causal", vision_cfg=vision, custom_text=True), OpenCLIPSource("tiny-timm")
    )
    for asked, kwargs in (
        ("per-layer image prompts", {"prompts": torch.zeros(1, 1, 192)}),
        ("local", {"local": True}),
    ):
        with pytest.raises(
            UnsupportedTower, match=f"{asked}.*image tower is TimmModel \\(timm's VisionTransformer\\)"
        ):
            encode_image(model.visual, torch.zeros(1, 3, 224, 224), **kwargs)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("kind", ["layerscale", "siglip"])
def test_fp16_weights_keep_the_fingerprint_and_the_features(kind, tiny_open_clip):
    """OpenAI's fp16 layout (LayerNorms fp32, LayerScale and a biased projection fp16, which
    open_clip's own conversion leaves or fails on): features within fp16 rounding of fp32's."""
    spec, model = tiny_open_clip(kind)
    half = load_clip(spec.name, dtype=torch.float16, weights=spec.weights, model_config=spec.config)
    assert backbone_fingerprint(half) == backbone_fingerprint(model)
    tower = text_tower(half)
    assert tower.dtype == torch.float16 and tower.ln_final.weight.dtype == torch.float32
    with torch.no_grad():
        ours = encode_texts(exact_encoder(half), tower.token_embedding, TEXTS, normalize=False)
        reference = model.encode_text(own_tokens(model, TEXTS))
        assert (ours - reference).abs().max() <= 1e-2 * reference.abs().max()
        x = images()
        image = encode_image(half.visual, x.half(), local=True).features.float()
        assert (image - model.encode_image(x)).abs().max() <= 1e-2 * model.encode_image(x).abs().max()


def test_other_weights_have_another_fingerprint(tiny_open_clip):
    spec, model = tiny_open_clip("layerscale")
    other = load_clip(
        spec.name,
        weights=tiny_open_clip("causal")[0].weights,
        model_config=tiny_open_clip("causal")[0].config,
    )
    assert backbone_fingerprint(other) != backbone_fingerprint(model)


def test_missing_and_wrong_weights_files_are_clear_errors(tiny_open_clip, tmp_path):
    spec, _ = tiny_open_clip("causal")
    with pytest.raises(
        CheckpointError, match=r"'nowhere.pt' is not an existing file, an hf-hub: name or a pretrained tag"
    ):
        load_clip(spec.name, weights="nowhere.pt", model_config=spec.config)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for wrong in (tiny_open_clip("siglip")[0].weights, str(garbage)):  # another architecture; no checkpoint
        with pytest.raises(CheckpointError) as err:
            load_clip(spec.name, weights=wrong, model_config=spec.config)
        assert f"{wrong} does not hold the weights of open_clip:tiny-causal" in str(err.value)
        assert "Check MODEL.BACKBONE.WEIGHTS" in str(err.value)
    with pytest.raises(CheckpointError, match="MODEL.BACKBONE.WEIGHTS is empty for open_clip:tiny-causal"):
        load_clip(spec.name, model_config=spec.config)
    with pytest.raises(
        CheckpointError, match="MODEL.BACKBONE.WEIGHTS is set, but MODEL.BACKBONE.NAME 'ViT-B/16'"
    ):
        load_clip("ViT-B/16", weights="laion2b_s34b_b88k")
    with pytest.raises(CheckpointError, match="open_clip has no model 'ViT-Q-99'"):
        load_clip("open_clip:ViT-Q-99", weights="x")
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"embed_dim": 32}))
    with pytest.raises(CheckpointError, match="lacks vision_cfg, text_cfg"):
        load_clip("open_clip:x", weights=spec.weights, model_config=str(bad_config))


def refuse_downloads(monkeypatch):
    import clipprompt.open_clip_weights as weights

    def offline(*args):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(weights, "download_hub_file", offline)
    monkeypatch.setattr(weights, "download_url_file", offline)


def test_tags_resolve_from_the_cache_or_say_what_to_download(tmp_path, monkeypatch):
    refuse_downloads(monkeypatch)
    source = OpenCLIPSource("ViT-B-16", "laion2b_s34b_b88k", download_root=str(tmp_path))
    config = {"embed_dim": 512}
    with pytest.raises(CheckpointError) as err:
        resolve_weights(source, config)
    folder = tmp_path / "laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
    assert str(err.value).startswith(
        "The weights 'laion2b_s34b_b88k' of open_clip:ViT-B-16 are not in the cache and cannot be downloaded"
    )
    assert (
        "Download https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_pytorch_model.bin"
        f" where there is network access and put it at {folder / 'open_clip_pytorch_model.bin'}"
    ) in str(err.value)
    folder.mkdir()
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"cached")
    assert resolve_weights(source, config)[0] == str(folder / "open_clip_pytorch_model.bin")
    hub = OpenCLIPSource("ViT-B-16", "hf-hub:org/repo/weights.safetensors", download_root=str(tmp_path))
    with pytest.raises(
        CheckpointError, match="resolve/main/weights.safetensors .* at .*org--repo/weights.safetensors"
    ):
        resolve_weights(hub, config)


def test_unknown_tags_and_other_activations_are_refused(tmp_path, monkeypatch):
    refuse_downloads(monkeypatch)
    with pytest.raises(
        CheckpointError, match=r"pretrained tag of open_clip:ViT-B-16 \(openai, laion400m_e31"
    ):
        resolve_weights(OpenCLIPSource("ViT-B-16", "laion9b"), {})
    with pytest.raises(
        CheckpointError, match="trained with QuickGELU.*set MODEL.BACKBONE.NAME open_clip:ViT-B-16-quickgelu"
    ):
        resolve_weights(OpenCLIPSource("ViT-B-16", "dfn2b", download_root=str(tmp_path)), {})


def test_a_checkpoint_of_another_backbone_is_refused(tiny_open_clip, tmp_path):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from clipprompt.learnable import CheckpointMismatch
    from trainers import build_trainer, make_cfg

    def coop(kind):
        spec, model = tiny_open_clip(kind)
        opts = [*spec.opts(), "INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32"]
        cfg = make_cfg(
            "CoOp", "configs/datasets/oxford_pets.yaml", "configs/trainers/CoOp/vit_b16_ep50.yaml", opts
        )
        return build_trainer(cfg, ["cat", "dog"], clip_model=model)

    coop("layerscale").save_model(0, str(tmp_path))
    identity = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-1", weights_only=True)["identity"]
    assert (
        identity["backbone"]["library"] == "open_clip"
        and identity["backbone"]["name"] == "open_clip:tiny-layerscale"
    )
    assert identity["backbone"]["weights"].endswith("tiny-layerscale.pt")
    with pytest.raises(
        CheckpointMismatch,
        match="backbone 'open_clip:tiny-layerscale' with weights .* vs 'open_clip:tiny-causal'",
    ):
        coop("causal").load_model(str(tmp_path), epoch=1)


def test_zero_shot_logits_carry_the_logit_bias(tiny_open_clip):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from trainers import build_trainer, make_cfg

    spec, model = tiny_open_clip("siglip")
    opts = [*spec.opts_for_reference_path(), "INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32"]
    cfg = make_cfg(
        "ZeroshotCLIP",
        "configs/datasets/oxford_pets.yaml",
        "configs/trainers/ZeroshotCLIP/vit_b16.yaml",
        opts,
    )
    trainer = build_trainer(cfg, CLASSES, clip_model=model)
    x = images()
    with torch.no_grad():
        logits = trainer.model_inference(x)
        v = F.normalize(model.encode_image(x), dim=-1)
        t = F.normalize(
            model.encode_text(own_tokens(model, [f"a photo of a {c}, a type of pet." for c in CLASSES])),
            dim=-1,
        )
        assert_relative(logits, model.logit_scale.exp() * v @ t.t() + model.logit_bias, "zero-shot logits")


EXAMPLES = {  # example trainer config -> (trainer, its recipe, backbone, weights)
    "CoOp/laion2b_vit_b16_ep50_ctxv1": (
        "CoOp",
        "vit_b16_ep50_ctxv1",
        "open_clip:ViT-B-16",
        "laion2b_s34b_b88k",
    ),
    "CoOp/eva02_b16_ep50_ctxv1": ("CoOp", "vit_b16_ep50_ctxv1", "open_clip:EVA02-B-16", "merged2b_s8b_b131k"),
    "MoCoOp/laion2b_vit_b16_paper_ep25": (
        "MoCoOp",
        "paper_vit_b16_ep25",
        "open_clip:ViT-B-16",
        "laion2b_s34b_b88k",
    ),
    "MoCoOp/eva02_b16_paper_ep25": (
        "MoCoOp",
        "paper_vit_b16_ep25",
        "open_clip:EVA02-B-16",
        "merged2b_s8b_b131k",
    ),
    "ZeroshotCLIP/siglip_vit_b16": ("ZeroshotCLIP", "vit_b16", "open_clip:ViT-B-16-SigLIP", "webli"),
}
SIGLIP = {
    "INPUT.PIXEL_MEAN": [0.5] * 3,
    "INPUT.PIXEL_STD": [0.5] * 3,
    "TRAINER.TEXT_ENCODER.TRUNCATE": False,
    "TRAINER.TEXT_ENCODER.SHARE_PREFIX": False,
}


def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


@pytest.mark.parametrize("config", list(EXAMPLES))
def test_example_configs_are_the_trainers_recipe_on_another_backbone(config):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from trainers import make_cfg

    trainer, recipe, name, weights = EXAMPLES[config]
    folder = config.split("/")[0]
    ours, theirs = (
        flat(make_cfg(trainer, "configs/datasets/oxford_pets.yaml", f"configs/trainers/{path}.yaml"))
        for path in (config, f"{folder}/{recipe}")
    )
    changed = {k: v for k, v in ours.items() if v != theirs[k]}
    expected = {"MODEL.BACKBONE.NAME": name, "MODEL.BACKBONE.WEIGHTS": weights} | (
        SIGLIP if "SigLIP" in name else {}
    )
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()} == expected


def test_trainers_refuse_inexact_speed_options_and_other_normalisation(tiny_open_clip):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from trainers import build_trainer, make_cfg

    pets, coop = "configs/datasets/oxford_pets.yaml", "configs/trainers/CoOp/vit_b16_ep50.yaml"
    spec, model = tiny_open_clip("siglip")
    cfg = make_cfg("CoOp", pets, coop, [*spec.opts(), "INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32"])
    with pytest.raises(UnsupportedSpeedOption, match=(
        "TRAINER.TEXT_ENCODER.TRUNCATE and TRAINER.TEXT_ENCODER.SHARE_PREFIX would change the text features "
        "of open_clip:tiny-siglip: .* Set TRAINER.TEXT_ENCODER.TRUNCATE False and TRAINER.TEXT_ENCODER.SHARE_PREFIX False"
    )):  # fmt: skip
        build_trainer(cfg, CLASSES, clip_model=model)
    spec, model = tiny_open_clip("causal")
    tagged = copy.deepcopy(model)  # as if its weights were a pretrained tag trained on SigLIP's normalisation
    tagged.clipprompt_backbone.preprocess = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    cfg = make_cfg("CoOp", pets, coop, [*spec.opts(), "INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32"])
    with pytest.raises(
        ValueError,
        match=r"INPUT.PIXEL_MEAN \[0.48145466, .*\] is not the normalisation "
        r"open_clip:tiny-causal .* was trained with: set INPUT.PIXEL_MEAN \[0.5, 0.5, 0.5\]",
    ):
        build_trainer(cfg, CLASSES, clip_model=tagged)
