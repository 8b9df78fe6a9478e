import pytest
import torch

from clipprompt.prompts import PromptAssembler
from clipprompt.templates import EOT_ID, SOT_ID, PromptForm, TemplateError, bpe, check_template, fill
from clipprompt.text_encoder import TextEncoder, encode_texts, tokenize

CLASSES = ["globe_thistle", "dog", "school bus", "Annual Crop Land"]


@pytest.mark.parametrize(
    "template, before, after, suffix",
    [
        ("a photo of a {}, a type of flower.", 4, 5, "."),
        ("{} texture.", 0, 1, "."),
        ("itap of a {}.", 4, 0, "."),  # "itap" is two BPE tokens
        ("a close-up photo of the {}.", 7, 0, "."),  # "close-up" is three tokens
        ("a  photo   of a {}.", 4, 0, "."),  # whitespace is normalised first
        ("a {} in a video game.", 1, 4, "."),
        ("a {} hidden among the stars", 1, 4, ""),
    ],
)
def test_context_spans_are_bpe_counts(template, before, after, suffix):
    form = PromptForm.from_template(template)
    assert (form.n_before, form.n_after, form.suffix) == (before, after, suffix)
    assert len(form.init_ids) == before + after


@pytest.mark.parametrize("bad", ["a photo of a.", "a {} and a {}.", "{x}", None])
def test_template_without_single_placeholder_is_rejected(bad):
    with pytest.raises(TemplateError, match=r"\{\}"):
        check_template(bad)


@pytest.mark.parametrize(
    "template",
    [
        "a photo of a {}, a type of flower.",
        "{} texture.",
        "itap of a {}.",
        "a close-up photo of the {}.",
        "a {} in a video game.",
        "a  photo of the hard to see {}.",
        "a centered satellite photo of {}.",
    ],
)
def test_initial_soft_prompt_is_the_hard_prompt(tiny_clip, template):
    """Initialised from its template, a soft prompt reproduces the template token by token."""
    form = PromptForm.from_template(template)
    assembler = PromptAssembler([form], CLASSES, tiny_clip.token_embedding)
    embeds, eot, prefix = assembler(assembler.init_table())
    hard_ids = tokenize([fill(template, c) for c in CLASSES])
    assert embeds.shape[1] == hard_ids.shape[1]
    torch.testing.assert_close(embeds, tiny_clip.token_embedding(hard_ids))
    assert eot.tolist() == hard_ids.argmax(1).tolist()
    encoder = TextEncoder(tiny_clip)
    with torch.no_grad():
        soft = torch.nn.functional.normalize(encoder(embeds, eot, prefix), dim=-1)
    hard = encode_texts(encoder, tiny_clip.token_embedding, [fill(template, c) for c in CLASSES])
    torch.testing.assert_close(soft, hard, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position, before", [("end", 4), ("middle", 2), ("front", 0)])
def test_coop_class_token_positions(tiny_clip, position, before):
    form = PromptForm.coop(4, "", position)
    assembler = PromptAssembler([form], ["school bus"], tiny_clip.token_embedding)
    ids, slots = assembler.token_ids[0].tolist(), assembler.slot_ids[0].tolist()
    name = bpe("school bus")
    assert ids[0] == SOT_ID
    assert ids[1 + before : 1 + before + len(name)] == name
    ctx_positions = [i for i, s in enumerate(slots) if s >= 0]
    assert [slots[i] for i in ctx_positions] == [0, 1, 2, 3]
    assert ctx_positions == list(range(1, 1 + before)) + list(
        range(1 + before + len(name), 1 + len(name) + 4)
    )
    assert ids[1 + len(name) + 4 :][:2] == bpe(".") + [EOT_ID]


def test_ctx_init_must_match_n_ctx():
    with pytest.raises(TemplateError, match="N_CTX"):
        PromptForm.coop(16, "a photo of a")


@pytest.mark.parametrize("n_ctx", [0, -1])
def test_context_length_must_be_positive(n_ctx):
    with pytest.raises(TemplateError, match=f"N_CTX must be at least 1 .*, not {n_ctx}"):
        PromptForm.coop(n_ctx)


def test_class_specific_context_uses_one_block_per_class(tiny_clip):
    form = PromptForm.coop(2)
    assembler = PromptAssembler([form], CLASSES, tiny_clip.token_embedding, class_specific=True)
    assert assembler.table_size == 2 * len(CLASSES)
    table = torch.arange(assembler.table_size, dtype=torch.float)[:, None].repeat(1, 64)
    embeds = assembler(table)[0]
    for c in range(len(CLASSES)):
        assert embeds[c, 1:3, 0].tolist() == [2 * c, 2 * c + 1]


def test_rows_of_several_forms_and_chunk_truncation(tiny_clip):
    forms = [
        PromptForm.from_template("{} texture."),
        PromptForm.from_template("a photo of a {}, a type of flower."),
    ]
    assembler = PromptAssembler(forms, CLASSES, tiny_clip.token_embedding)
    table = assembler.init_table()
    assert table.shape[0] == 1 + 9
    full = assembler(table)[0]
    part, part_eot, _ = assembler(table, rows=slice(0, len(CLASSES)))
    assert part.shape[1] == int(part_eot.max()) + 1 < full.shape[1]
    torch.testing.assert_close(part, full[: len(CLASSES), : part.shape[1]])


def test_batched_tables_equal_per_table_assembly(tiny_clip):
    assembler = PromptAssembler([PromptForm.coop(4, "a photo of a")], CLASSES, tiny_clip.token_embedding)
    tables = torch.randn(3, assembler.table_size, 64, requires_grad=True)
    batched = assembler(tables)[0]
    for b in range(3):
        torch.testing.assert_close(batched[b], assembler(tables[b])[0])
    batched.sum().backward()
    assert tables.grad.abs().sum() > 0


def test_untruncated_rows_have_77_tokens(tiny_clip):
    assembler = PromptAssembler([PromptForm.coop(4)], CLASSES, tiny_clip.token_embedding, truncate=False)
    assert assembler(assembler.init_table())[0].shape[1] == 77
