"""Shared-prefix encoding (`clipprompt.prefix_sharing`, `TextEncoder(share_prefix=True)`): which
rows share a prefix, how a call is packed, and that the packed encoder gives the reference
path's features and gradients, on a text tower with several attention heads."""

import clip
import pytest
import torch
import torch.nn.functional as F

from clipprompt.clip_loading import build_tiny_clip, convert_weights
from clipprompt.prefix_sharing import SharedPrefix, pack, prefix_calls
from clipprompt.prompts import PromptAssembler
from clipprompt.templates import PromptForm, fill
from clipprompt.text_encoder import TextEncoder, encode_templates

pytestmark = pytest.mark.usefixtures("one_thread")

# Context before ("end", "photo", "itap"), around ("middle", "flower") and after ("front",
# "texture") the class name; "photo", "flower" and "itap" share a prefix length (5), "photo"
# and "itap" also their tails, so one call packs blocks of one prefix length in several buckets.
FORMS = [
    PromptForm.coop(6, "", "end"),
    PromptForm.coop(6, "", "middle"),
    PromptForm.coop(6, "", "front"),
    PromptForm.from_template("{} texture."),
    PromptForm.from_template("a photo of a {}."),
    PromptForm.from_template("a photo of a {}, a type of flower."),
    PromptForm.from_template("itap of a {}."),
]
CLASSES = ["dog", "school bus", "great pyrenees mountain dog", "Annual Crop Land", "globe_thistle", "x"]
TEMPLATES = ["a photo of a {}.", "{} texture.", "itap of the {} on a very long and winding road."]


@pytest.fixture(scope="module")
def wide_clip():
    """A tiny CLIP whose text transformer has 3 attention heads (width 192)."""
    return build_tiny_clip(embed_dim=64, transformer_width=192).requires_grad_(False)


def assembler_of(model, forms=FORMS, class_specific=False, truncate=True):
    return PromptAssembler(
        forms, CLASSES, model.token_embedding, class_specific=class_specific, truncate=truncate
    )


def relative_error(actual, expected):
    """Largest difference relative to the expected tensor's largest value."""
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_relative(actual, expected, rtol=1e-5):
    assert relative_error(actual, expected) <= rtol, f"relative error {relative_error(actual, expected):.3g}"


def features_and_grad(encoder, assembler, table):
    table = table.clone().requires_grad_()
    feats = encoder(*assembler(table))
    (feats.pow(2).sum() + feats[:, 0].sum()).backward()
    return feats.detach(), table.grad


def reference_encoder(model):
    return TextEncoder(model, attention="math", truncate=False, share_prefix=False)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"attention": "math"},
        {"truncate": False},
        {"chunk_size": 4},
        {"chunk_size": 1},
        {"chunk_size": 5, "checkpointing": True},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
@pytest.mark.parametrize("class_specific", [False, True], ids=["shared_ctx", "csc"])
def test_shared_prefix_gives_the_reference_features_and_gradients(wide_clip, options, class_specific):
    truncate = options.get("truncate", True)
    assembler = assembler_of(wide_clip, class_specific=class_specific, truncate=truncate)
    table = assembler.init_table(std=0.5, generator=torch.Generator().manual_seed(0))
    ref_assembler = assembler_of(wide_clip, class_specific=class_specific, truncate=False)
    ref_feats, ref_grad = features_and_grad(reference_encoder(wide_clip), ref_assembler, table)
    feats, grad = features_and_grad(TextEncoder(wide_clip, **options), assembler, table)
    assert_relative(feats, ref_feats)
    assert_relative(grad, ref_grad)


def test_hard_prompts_match_clip_encode_text(wide_clip):
    feats = encode_templates(TextEncoder(wide_clip), wide_clip.token_embedding, TEMPLATES, CLASSES)
    for t, template in enumerate(TEMPLATES):
        with torch.no_grad():
            ref = wide_clip.encode_text(clip.tokenize([fill(template, c) for c in CLASSES]))
        assert_relative(feats[t], F.normalize(ref, dim=-1))


def test_each_prefix_runs_once(wide_clip):
    """The transformer runs every form's prefix once and each row's own positions up to its EOT."""
    assembler = assembler_of(wide_clip)
    embeds, eot, prefix = assembler(assembler.init_table())
    tokens = []
    hook = wide_clip.transformer.resblocks[0].ln_1.register_forward_hook(
        lambda module, args, out: tokens.append(args[0].shape[0])
    )
    try:
        with torch.no_grad():
            TextEncoder(wide_clip)(embeds, eot, prefix)
    finally:
        hook.remove()
    lengths = prefix.length.view(len(FORMS), len(CLASSES))
    expected = int(lengths[:, 0].sum() + (eot + 1 - prefix.length).sum())
    assert tokens == [expected]
    assert expected < 0.5 * embeds.shape[0] * embeds.shape[1]  # the truncated path's positions


def test_no_per_row_copy_of_the_prefix_is_kept_for_backward(wide_clip):
    """What autograd keeps per position run is about what the unshared path keeps: a per-row copy
    of each block's prefix keys and values would add 2 x P x width per row and layer (50 % here)."""
    assembler = PromptAssembler([PromptForm.coop(16)], CLASSES * 4, wide_clip.token_embedding)
    table = assembler.init_table()
    weights = {p.untyped_storage().data_ptr() for p in wide_clip.parameters()}

    def saved_bytes_and_tokens(encoder):
        storages, tokens = {}, []

        def keep(t):
            if t.untyped_storage().data_ptr() not in weights:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        hook = wide_clip.transformer.resblocks[0].ln_1.register_forward_hook(
            lambda module, args, out: tokens.append(args[0].shape[:-1].numel())
        )
        try:
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                encoder(*assembler(table.clone().requires_grad_()))
        finally:
            hook.remove()
        return sum(storages.values()), sum(tokens)

    shared_bytes, shared_tokens = saved_bytes_and_tokens(TextEncoder(wide_clip))
    bytes_, tokens = saved_bytes_and_tokens(TextEncoder(wide_clip, share_prefix=False))
    assert shared_tokens < tokens / 3
    # measured: 1.15; 1.46 with per-row copies of the prefix keys alone
    assert shared_bytes / shared_tokens < 1.25 * bytes_ / tokens, (shared_bytes / shared_tokens) / (
        bytes_ / tokens
    )


def test_prompt_sets_share_no_prefix_between_sets(wide_clip):
    """`[B, N, L, d]` prompt sets (CoCoOp: one context per image) are encoded as if one at a time."""
    assembler = assembler_of(wide_clip, FORMS[:2])
    tables = torch.randn(3, assembler.table_size, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = TextEncoder(wide_clip, chunk_size=5)(*assembler(tables))
        single = torch.stack([reference_encoder(wide_clip)(*assembler(t)[:2]) for t in tables])
    assert batched.shape == single.shape
    assert_relative(batched, single)


@pytest.mark.parametrize("precision", ["fp16", "bf16-autocast"])
def test_shared_prefix_in_reduced_precision(precision):
    """fp16 weights (PREC fp16) and bf16 autocast (PREC amp on a CPU): the shared path is as close
    to the fp32 features and gradients as the unshared path in the same precision."""
    fp32 = build_tiny_clip(embed_dim=64, transformer_width=192).requires_grad_(False)
    table = assembler_of(fp32).init_table(generator=torch.Generator().manual_seed(0))
    exact = features_and_grad(reference_encoder(fp32), assembler_of(fp32), table)
    model = build_tiny_clip(embed_dim=64, transformer_width=192).requires_grad_(False)
    if precision == "fp16":
        convert_weights(model)
    errors = []
    for share in (False, True):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-autocast"):
            feats, grad = features_and_grad(
                TextEncoder(model, share_prefix=share), assembler_of(model), table
            )
        assert torch.isfinite(feats).all() and torch.isfinite(grad).all()
        errors.append([relative_error(feats.float(), exact[0]), relative_error(grad, exact[1])])
    unshared, shared = errors
    assert shared[0] < 2 * unshared[0] and shared[1] < 2 * unshared[1], errors


def test_shared_prefix_of_forms(tiny_clip):
    """SOS and the context before the class name; more where every class name starts alike."""
    assembler = assembler_of(tiny_clip)
    lengths = assembler.prefix_length.view(len(FORMS), len(CLASSES))
    assert (lengths == lengths[:, :1]).all()
    assert lengths[:, 0].tolist() == [7, 4, 1, 1, 5, 5, 5]
    assert assembler.prefix_group.tolist() == [f for f in range(len(FORMS)) for _ in CLASSES]
    csc = assembler_of(tiny_clip, FORMS[:1], class_specific=True)
    assert csc.prefix_length.tolist() == [1] * len(CLASSES)  # each class has its own context
    greats = PromptAssembler(
        [PromptForm.coop(2, "", "front")], ["great dane", "great pyrenees"], tiny_clip.token_embedding
    )
    assert greats.prefix_length.tolist() == [2, 2]  # SOS and "great"
    # A prompt form with one class shares everything before its EOT.
    single = PromptAssembler([PromptForm.coop(2)], ["dog"], tiny_clip.token_embedding)
    assert single.prefix_length.tolist() == single.eot.tolist()


def test_packing_reads_each_position_once(tiny_clip):
    assembler = assembler_of(tiny_clip)
    _, eot, prefix = assembler(assembler.init_table())
    (rows,) = prefix_calls(eot, prefix)
    packing = pack(rows, eot, prefix)
    assert [p for p, _ in packing.prefixes] == [1, 4, 5, 7]  # segments in order of prefix length
    assert packing.prefixes[2] == (5, 3)  # "photo", "flower", "itap"
    # "photo" and "itap" (blocks 0 and 2 of that segment) have equal tails: buckets of both.
    subsets = [b.tolist() for s, b, _, _ in packing.buckets if s == 2 and b is not None]
    assert [0, 2] in subsets and [1] in subsets
    assert sum(packing.sizes) == len(packing.token_rows) == len(packing.token_positions)
    pairs = list(zip(packing.token_rows.tolist(), packing.token_positions.tolist()))
    assert len(set(pairs)) == len(pairs)
    first_of_group = {}
    for row in rows.tolist():
        first_of_group.setdefault(int(prefix.group[row]), row)
    expected = set()
    for row in range(len(eot)):
        p = int(prefix.length[row])
        expected |= {(row, k) for k in range(p, int(eot[row]) + 1)}
        expected |= {(first_of_group[int(prefix.group[row])], k) for k in range(p)}
    assert set(pairs) == expected
    assert sorted(packing.rows.tolist()) == list(range(len(eot)))
    eot_pairs = [pairs[i] for i in packing.eot_tokens.tolist()]
    assert eot_pairs == [(row, int(eot[row])) for row in packing.rows.tolist()]


def test_chunks_hold_whole_groups_or_carry_their_prefix(tiny_clip):
    assembler = assembler_of(tiny_clip)
    _, eot, prefix = assembler(assembler.init_table())
    calls = prefix_calls(eot, prefix, chunk_size=4)
    assert all(len(rows) <= 4 for rows in calls)
    assert sorted(torch.cat(calls).tolist()) == list(range(len(eot)))
    for rows in calls:
        packing = pack(rows, eot, prefix)
        groups = prefix.group[rows].unique()
        # every group of the call has its prefix in the call
        assert sum(blocks for _, blocks in packing.prefixes) == len(groups)
        assert sum(p * blocks for p, blocks in packing.prefixes) == sum(
            packing.sizes[: len(packing.prefixes)]
        )


def test_untruncated_packing_runs_every_position(tiny_clip):
    assembler = assembler_of(tiny_clip, truncate=False)
    _, eot, prefix = assembler(assembler.init_table())
    (rows,) = prefix_calls(eot, prefix)
    packing = pack(rows, eot, prefix, width=77)
    own = sum(packing.sizes[len(packing.prefixes) :])
    assert own == int((77 - prefix.length).sum())


def test_shared_prefix_needs_no_prefix_argument(tiny_clip):
    """Without a SharedPrefix (any caller with plain prompts) the encoder runs every position."""
    assembler = assembler_of(tiny_clip)
    embeds, eot, prefix = assembler(assembler.init_table())
    with torch.no_grad():
        plain = TextEncoder(tiny_clip)(embeds, eot)
        shared = TextEncoder(tiny_clip)(embeds, eot, prefix)
    assert_relative(shared, plain)
    assert isinstance(prefix, SharedPrefix)
