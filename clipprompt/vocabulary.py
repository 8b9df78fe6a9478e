"""Words of the class names that a CLIP cannot have learnt.

A CLIP checkpoint whose pretraining captions used only part of the BPE vocabulary may store the
other token embeddings as zeros: the tiny demo CLIP (`assets/demo_clip_rn_tiny.pt.gz`,
tools/demo/pretrain.py) keeps only the rows of the tokens its captions used. A class-name word
made of such a token means nothing to the model; classes that differ only in such words get the
same prompt, and predictions among them tie. OpenAI's CLIPs have no zero row (every embedding
starts from a random initialisation), so they are never warned about.
"""

from .templates import bpe, clean_classname

SHOWN = 12  # words named in the warning


def unlearnt_words(token_embedding, classnames):
    """{word: [class names using it]} of the class-name words (lower case, as CLIP's tokenizer
    reads them) with a token whose embedding row is all zeros."""
    zero_rows = (token_embedding.weight == 0).all(dim=1)
    if not bool(zero_rows.any()):
        return {}
    found = {}
    for name in dict.fromkeys(classnames):
        for word in clean_classname(name).lower().split():
            if any(bool(zero_rows[token]) for token in bpe(word)):
                found.setdefault(word, []).append(name)
    return found


def unlearnt_words_warning(token_embedding, classnames, backbone):
    """The start-up warning naming the class-name words the CLIP `backbone` cannot have learnt,
    or None when there are none."""
    found = unlearnt_words(token_embedding, classnames)
    if not found:
        return None
    listed = [
        f"'{word}' ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for word, names in found.items()
    ]
    more = f" and {len(listed) - SHOWN} more" if len(listed) > SHOWN else ""
    return (
        f"WARNING: the class names contain {len(found)} word(s) that the CLIP of MODEL.BACKBONE.NAME "
        f"{backbone} never saw in pretraining (their token embeddings are zero): "
        f"{'; '.join(listed[:SHOWN])}{more}. To this model such words carry no meaning, so classes "
        "that differ only in them get the same prompt and their predictions tie. Name the classes "
        "with words of its pretraining captions (for the demo CLIP: the demo world's colours and "
        "shapes, docs/DEMO_WORLD.md), or use a CLIP pretrained on real captions (e.g. ViT-B/16)."
    )
