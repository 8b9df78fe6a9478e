"""The pretraining distribution of the demo world: (image, caption) pairs whose captions name
the class, often the style, and sometimes the clutter, position or background."""

import re

import numpy as np

from tools.demo.render import draw_scenes, sample_scenes
from tools.demo.world import (
    CLASSNAMES,
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    STYLE_TEMPLATES,
    STYLES,
    class_parts,
    classname,
)

# Probabilities of the pretraining distribution (see docs/DEMO_WORLD.md).
PRETRAIN_CLUTTER_P = 0.25
CAPTION_TEMPLATE_P = 0.25  # caption is exactly the style's hand-crafted template
CAPTION_STYLE_P = 0.7  # otherwise: a free-form caption mentions the style this often
CAPTION_CLUTTER_P = 0.5  # a cluttered image's free-form caption mentions the clutter
CAPTION_POSITION_P = 0.2
CAPTION_BACKGROUND_P = 0.15

MEDIA = ("photo", "picture", "image", "rendering")
# {m}: a medium noun; {obj}: the object with its article, in a varied word order;
# {cls}: the object as "<colour> <shape>" without article.
GENERIC_CAPTIONS = ("a {m} of {obj}", "{obj}", "a {m} showing {obj}", "there is {obj} in this {m}")
STYLE_CAPTIONS = {
    "clean": ("a clean {m} of {obj}", "a good {m} of {obj}", "a clear {m} of {obj}"),
    "blurry": (
        "a blurry {m} of {obj}",
        "a blurred {m} of {obj}",
        "an out of focus {m} of {obj}",
        "{obj}, blurry",
    ),
    "pixelated": ("a pixelated {m} of {obj}", "a low resolution {m} of {obj}", "a blocky {m} of {obj}"),
    "sketch": (
        "a sketch of {obj}",
        "a drawing of {obj}",
        "an outline of {obj}",
        "a line drawing of {obj}",
        "a pencil sketch of {obj}",
    ),
    "textured": (
        "a {m} of {obj} with a pattern",
        "a {m} of a patterned {cls}",
        "a {m} of a textured {cls}",
        "a striped or checkered {cls}",
    ),
    "cropped": (
        "a cropped {m} of {obj}",
        "a close-up {m} of {obj}",
        "a {m} of part of {obj}",
        "{obj}, cut off at the edge",
    ),
    "small": (
        "a {m} of the small {cls}",
        "a {m} of a tiny {cls}",
        "a small {cls}",
        "a {m} of a little {cls}",
    ),
    "large": ("a {m} of the large {cls}", "a {m} of a big {cls}", "a huge {cls}", "a {m} of a large {cls}"),
    "dark": (
        "a dark {m} of {obj}",
        "a dim {m} of {obj}",
        "a {m} of {obj} in low light",
        "a low light {m} of {obj}",
    ),
    "bright": (
        "a bright {m} of {obj}",
        "an overexposed {m} of {obj}",
        "a washed out {m} of {obj}",
        "a {m} of {obj} in bright light",
    ),
    "noisy": (
        "a noisy {m} of {obj}",
        "a grainy {m} of {obj}",
        "a {m} of {obj} with noise",
        "a speckled {m} of {obj}",
    ),
}
OBJECT_PHRASES = (  # (form, weight)
    ("a {colour} {shape}", 0.55),
    ("a {shape} that is {colour}", 0.15),
    ("a {colour} colored {shape}", 0.1),
    ("a {colour} {shape} shape", 0.1),
    ("a {shape} in {colour}", 0.1),
)
CLUTTER_PHRASES = (
    "on a cluttered background",
    "in front of clutter",
    "on a busy background",
    "among scribbles",
)
assert tuple(STYLE_CAPTIONS) == STYLES


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _fix_articles(text):
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def make_caption(rng, shape_index, colour_index, style_index, cluttered, centre, background):
    """One pretraining caption for a scene (see the CAPTION_* probabilities above)."""
    shape, colour, style = SHAPES[shape_index], COLOURS[colour_index], STYLES[style_index]
    cls = classname(shape, colour)
    if rng.random() < CAPTION_TEMPLATE_P:
        return STYLE_TEMPLATES[style].format(cls)
    forms, weights = zip(*OBJECT_PHRASES)
    form = forms[int(rng.choice(len(forms), p=np.array(weights) / sum(weights)))]
    obj = form.format(colour=colour, shape=shape)
    pattern = _pick(rng, STYLE_CAPTIONS[style] if rng.random() < CAPTION_STYLE_P else GENERIC_CAPTIONS)
    text = pattern.format(m=_pick(rng, MEDIA), obj=obj, cls=cls)
    extras = []
    if cluttered and rng.random() < CAPTION_CLUTTER_P:
        extras.append(_pick(rng, CLUTTER_PHRASES))
    if rng.random() < CAPTION_POSITION_P:
        dx, dy = centre[0] - IMAGE_SIZE / 2, centre[1] - IMAGE_SIZE / 2
        if max(abs(dx), abs(dy)) < 8:
            extras.append("in the middle")
        elif abs(dx) > abs(dy):
            extras.append("on the right" if dx > 0 else "on the left")
        else:
            extras.append("at the bottom" if dy > 0 else "at the top")
    if rng.random() < CAPTION_BACKGROUND_P:
        tone = float(np.mean(background))
        if tone < 0.45:
            extras.append("on a dark background")
        elif tone > 0.65:
            extras.append("on a light background")
    for extra in extras:
        text += " " + extra
    if rng.random() < 0.8:
        text += "."
    return _fix_articles(text)


def pretraining_batch(rng, batch_size):
    """(uint8 images (n, 64, 64, 3), captions) of the pretraining distribution.

    Classes are uniform over the 40 rendered compositions, styles uniform, a quarter of the
    images cluttered. The 10 compositions in UNSEEN_CLASSNAMES never occur.
    """
    labels = rng.integers(0, len(CLASSNAMES), batch_size)
    shape_ids, colour_ids = zip(*(class_parts(CLASSNAMES[i]) for i in labels))
    style_ids = rng.integers(0, len(STYLES), batch_size)
    cluttered = rng.random(batch_size) < PRETRAIN_CLUTTER_P
    scenes = sample_scenes(rng, shape_ids, colour_ids, style_ids, cluttered)
    images = draw_scenes(scenes)
    captions = [
        make_caption(
            rng,
            shape_ids[i],
            colour_ids[i],
            style_ids[i],
            cluttered[i],
            scenes["centre"][i],
            scenes["background"][i],
        )
        for i in range(batch_size)
    ]
    return images, captions
