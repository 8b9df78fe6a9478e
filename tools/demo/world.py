"""The demo world: generated images of coloured shapes in hand-template styles.

A laptop-sized stand-in for "CLIP + a downstream dataset". Classes are compositions
"<colour> <shape>" (10 shapes x 5 colours = 50). Forty of them are rendered for pretraining a
tiny CLIP (`tools.pretrain_tiny_clip`) and form the prompt-learning dataset (20 base, 20 new);
the other ten are never rendered during pretraining and test compositional generalisation.

Every image is drawn in one of eleven styles, each of which a hand-crafted template describes
("a blurry photo of a {}.", "a sketch of a {}.", ...), which is the premise of MoCoOp.

The downstream dataset (few-shot train, val, test) is drawn from a shifted distribution, as
benchmark datasets are for CLIP: every image is cluttered (a quarter of the pretraining images
are) and is taken by a "camera" whose colour response differs from that of the pretraining
images (hues rotated by DOWNSTREAM_HUE_SHIFT degrees). See docs/DEMO_WORLD.md for the design
and the measured numbers.

This module holds the world's facts (vocabulary, classes, templates, sizes); `tools.demo.render`
draws scenes, `tools.demo.captions` the pretraining pairs and `tools.demo.dataset` the dataset
(`python -m tools.demo_world --root DIR [--seed N]`).
"""

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "diamond",
    "hexagon",
    "crescent",
    "arrow",
)
COLOURS = ("red", "green", "blue", "yellow", "purple")
COLOUR_RGB = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.12, 0.68, 0.20),
    "blue": (0.14, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.58, 0.18, 0.78),
}
STYLES = (
    "clean",
    "blurry",
    "pixelated",
    "sketch",
    "textured",
    "cropped",
    "small",
    "large",
    "dark",
    "bright",
    "noisy",
)
# One hand-crafted template per style, in the manner of CLIP's ImageNet templates.
STYLE_TEMPLATES = {
    "clean": "a good photo of a {}.",
    "blurry": "a blurry photo of a {}.",
    "pixelated": "a pixelated photo of a {}.",
    "sketch": "a sketch of a {}.",
    "textured": "a photo of a textured {}.",
    "cropped": "a cropped photo of a {}.",
    "small": "a photo of the small {}.",
    "large": "a photo of the large {}.",
    "dark": "a dark photo of a {}.",
    "bright": "a bright photo of a {}.",
    "noisy": "a noisy photo of a {}.",
}
GENERIC_TEMPLATE = "a photo of a {}."

IMAGE_SIZE = 64
# CLIP's normalisation, so that the repository's usual INPUT.PIXEL_MEAN/STD apply unchanged.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

DATASET_DIR = "demo_world"
IMAGE_DIR = "images"
SPLIT_FILE = "split_zhou_DemoWorld.json"
SPLIT_SIZES = {"train": 32, "val": 8, "test": 50}
DEFAULT_SEED = 0

# The downstream camera rotates hues by this many degrees about the grey axis of RGB space.
DOWNSTREAM_HUE_SHIFT = 30.0


def classname(shape, colour):
    return f"{colour} {shape}"


def class_folder(name):
    return name.replace(" ", "_")


def _relation(shape_index, colour_index):
    """0: never rendered, 1-2: base, 3-4: new.

    A Latin-square assignment: every shape has one held-out colour, two base and two new
    colours, and every colour is held out for two shapes and is base/new for four shapes each,
    so that base, new and never-rendered classes share all shapes and colours.
    """
    return (colour_index - shape_index) % len(COLOURS)


def _compositions(relations):
    return tuple(
        classname(s, c)
        for si, s in enumerate(SHAPES)
        for ci, c in enumerate(COLOURS)
        if _relation(si, ci) in relations
    )


BASE_CLASSNAMES = _compositions({1, 2})
NEW_CLASSNAMES = _compositions({3, 4})
# Labels 0..39: the first 20 are the base classes (the repository's base/new split takes the
# first ceil(n/2) sorted labels as base).
CLASSNAMES = BASE_CLASSNAMES + NEW_CLASSNAMES
BASE_LABELS = tuple(range(len(BASE_CLASSNAMES)))
NEW_LABELS = tuple(range(len(BASE_CLASSNAMES), len(CLASSNAMES)))
UNSEEN_CLASSNAMES = _compositions({0})  # never rendered in pretraining nor in the dataset
ALL_CLASSNAMES = CLASSNAMES + UNSEEN_CLASSNAMES
_PARTS = {classname(s, c): (si, ci) for si, s in enumerate(SHAPES) for ci, c in enumerate(COLOURS)}


def class_parts(name):
    """(shape index, colour index) of a composition name such as "red circle"."""
    return _PARTS[name]


def label_of(name):
    return CLASSNAMES.index(name)
