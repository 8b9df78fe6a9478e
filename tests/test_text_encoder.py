import clip
import pytest
import torch

from clipprompt.clip_loading import build_tiny_clip
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm
from clipprompt.text_encoder import TextEncoder, encode_templates, encode_texts, tokenize

TEXTS = [
    "a photo of a dog.",
    "a photo of a {}, a type of flower.".format("globe thistle"),
    "itap of a large yellow school bus parked near the old station.",
    "x.",
]


def _reference(model, texts):
    with torch.no_grad():
        return model.encode_text(clip.tokenize(texts))


@pytest.mark.parametrize("attention", ["fused", "math"])
@pytest.mark.parametrize("chunk_size", [0, 3])
def test_truncated_encoder_matches_encode_text(tiny_clip, attention, chunk_size):
    encoder = TextEncoder(tiny_clip, attention=attention, chunk_size=chunk_size)
    ids = tokenize(TEXTS)
    assert ids.shape[1] == max(len(clip.clip._tokenizer.encode(t)) for t in TEXTS) + 2
    with torch.no_grad():
        ours = encoder(tiny_clip.token_embedding(ids), ids.argmax(1))
    torch.testing.assert_close(ours, _reference(tiny_clip, TEXTS), atol=1e-5, rtol=1e-5)


def test_vit_b16_sized_encoder_matches_encode_text():
    # Text tower of ViT-B/16 (width 512, 8 heads, 12 layers); the image tower is kept tiny.
    model = build_tiny_clip(embed_dim=512, transformer_width=512, transformer_layers=12)
    encoder = TextEncoder(model)
    ids = tokenize(TEXTS)
    with torch.no_grad():
        ours = encoder(model.token_embedding(ids), ids.argmax(1))
    torch.testing.assert_close(ours, _reference(model, TEXTS), atol=1e-5, rtol=1e-5)


def test_untruncated_path_is_77_tokens(tiny_clip):
    ids = tokenize(TEXTS, truncate=False)
    assert ids.shape == (len(TEXTS), 77)
    with torch.no_grad():
        ours = TextEncoder(tiny_clip)(tiny_clip.token_embedding(ids), ids.argmax(1))
    torch.testing.assert_close(ours, _reference(tiny_clip, TEXTS), atol=1e-5, rtol=1e-5)


def test_checkpointing_gives_same_values_and_gradients(tiny_clip):
    form = PromptForm.coop(4, "a photo of a")
    assembler = PromptAssembler([form], ["dog", "school bus", "cat"], tiny_clip.token_embedding)
    grads = []
    for checkpointing in (False, True):
        table = assembler.init_table().requires_grad_()
        encoder = TextEncoder(tiny_clip, checkpointing=checkpointing, chunk_size=2)
        feats = encoder(*assembler(table))
        feats.pow(2).sum().backward()
        grads.append((feats.detach(), table.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_encode_texts_normalises(tiny_clip):
    feats = encode_texts(TextEncoder(tiny_clip), tiny_clip.token_embedding, TEXTS)
    ref = torch.nn.functional.normalize(_reference(tiny_clip, TEXTS), dim=-1)
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)


def test_encode_templates_is_template_major(tiny_clip):
    templates, classes = (
        ["a photo of a {}.", "itap of the {} on a very long and winding road."],
        ["cat", "sea lion"],
    )
    feats = encode_templates(TextEncoder(tiny_clip), tiny_clip.token_embedding, templates, classes)
    assert feats.shape == (2, 2, tiny_clip.text_projection.shape[1])
    for t, template in enumerate(templates):
        ref = torch.nn.functional.normalize(
            _reference(tiny_clip, [template.format(c) for c in classes]), dim=-1
        )
        torch.testing.assert_close(feats[t], ref, atol=1e-5, rtol=1e-5)


def test_chunks_group_prompts_by_length_and_keep_the_order(tiny_clip, monkeypatch):
    texts = [TEXTS[i % len(TEXTS)] for i in range(10)]
    ids = tokenize(texts)
    embeds, eot = tiny_clip.token_embedding(ids), ids.argmax(1)
    encoder = TextEncoder(tiny_clip, chunk_size=3)
    widths = []
    encode = encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda x, *rest: widths.append(x.shape[1]) or encode(x, *rest))
    with torch.no_grad():
        chunked = encoder(embeds, eot)
        full = TextEncoder(tiny_clip)(embeds, eot)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    assert widths == sorted(widths) and widths[0] < widths[-1] == ids.shape[1]


def test_untruncated_encoder_keeps_chunks_at_full_width(tiny_clip, monkeypatch):
    ids = tokenize(TEXTS, truncate=False)
    encoder = TextEncoder(tiny_clip, chunk_size=2, truncate=False)
    widths = []
    encode = encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda x, *rest: widths.append(x.shape[1]) or encode(x, *rest))
    with torch.no_grad():
        feats = encoder(tiny_clip.token_embedding(ids), ids.argmax(1))
    assert widths == [77, 77]
    torch.testing.assert_close(feats, _reference(tiny_clip, TEXTS), atol=1e-5, rtol=1e-5)
