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

Usage: python -m tools.demo_world --root DIR [--seed N]
"""

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# The world's facts
# ---------------------------------------------------------------------------------------------

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

# Probabilities of the pretraining distribution (see docs/DEMO_WORLD.md).
PRETRAIN_CLUTTER_P = 0.25
CAPTION_TEMPLATE_P = 0.25  # caption is exactly the style's hand-crafted template
CAPTION_STYLE_P = 0.7  # otherwise: a free-form caption mentions the style this often
CAPTION_CLUTTER_P = 0.5  # a cluttered image's free-form caption mentions the clutter
CAPTION_POSITION_P = 0.2
CAPTION_BACKGROUND_P = 0.15


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


# ---------------------------------------------------------------------------------------------
# Rendering (numpy, vectorised over a batch; float32 elementwise ops only, so deterministic)
# ---------------------------------------------------------------------------------------------

_YY, _XX = np.meshgrid(
    np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5,
    np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5,
    indexing="ij",
)


def _polygon(u, v, n, radius, phase=0.0):
    apothem = radius * np.cos(np.pi / n)
    d = None
    for k in range(n):
        a = phase + 2 * np.pi * k / n
        dk = u * np.float32(np.cos(a)) + v * np.float32(np.sin(a))
        d = dk if d is None else np.maximum(d, dk)
    return d - np.float32(apothem)


def _box(u, v, half_u, half_v):
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def _sdf_circle(u, v):
    return np.hypot(u, v) - 0.9


def _sdf_square(u, v):
    return _box(u, v, 0.72, 0.72)


def _sdf_triangle(u, v):
    return _polygon(u, v + 0.15, 3, 1.0, phase=np.pi / 2)


def _star_edge():
    """Unit normal and offset of the edge from a spike tip (angle 0) to the next notch."""
    half = np.pi / 5
    tip = np.array([1.0, 0.0])
    notch = 0.4 * np.array([np.cos(half), np.sin(half)])
    d = notch - tip
    normal = np.array([-d[1], d[0]]) / np.hypot(*d)
    normal = normal if normal @ tip > 0 else -normal
    return half, normal.astype(np.float32), np.float32(normal @ tip)


_STAR = _star_edge()


def _sdf_star(u, v):
    half, normal, offset = _STAR
    # Fold the angle onto [0, half]: the angular distance from the nearest spike (spikes up).
    m = np.mod(np.arctan2(v, u) + np.pi / 2, 2 * half)
    phi = half - np.abs(m - half)
    r = np.hypot(u, v)
    return r * (normal[0] * np.cos(phi) + normal[1] * np.sin(phi)) - offset


def _sdf_heart(u, v):
    v = v - 0.08
    lobe = 0.475
    square = (np.abs(u) + np.abs(v - 0.15)) / np.sqrt(2) - 0.67 / np.sqrt(2)
    left = np.hypot(u + 0.335, v + 0.185) - lobe
    right = np.hypot(u - 0.335, v + 0.185) - lobe
    return np.minimum(square, np.minimum(left, right))


def _sdf_cross(u, v):
    return np.minimum(_box(u, v, 0.85, 0.27), _box(u, v, 0.27, 0.85))


def _sdf_diamond(u, v):
    a, b = 0.95, 0.55
    return (np.abs(u) * b + np.abs(v) * a - a * b) / np.float32(np.hypot(a, b))


def _sdf_hexagon(u, v):
    return _polygon(u, v, 6, 0.92)


def _sdf_crescent(u, v):
    return np.maximum(np.hypot(u, v) - 0.9, 0.72 - np.hypot(u - 0.42, v))


def _sdf_arrow(u, v):
    head = np.maximum(0.1 - u, 0.6 * u + 0.8 * np.abs(v) - 0.57)
    shaft = np.maximum(np.abs(v) - 0.2, np.maximum(-0.9 - u, u - 0.2))
    return np.minimum(head, shaft)


_SDFS = {
    "circle": _sdf_circle,
    "square": _sdf_square,
    "triangle": _sdf_triangle,
    "star": _sdf_star,
    "heart": _sdf_heart,
    "cross": _sdf_cross,
    "diamond": _sdf_diamond,
    "hexagon": _sdf_hexagon,
    "crescent": _sdf_crescent,
    "arrow": _sdf_arrow,
}
assert tuple(_SDFS) == SHAPES
_N_CLUTTER_LINES = 7


def _u(rng, low, high, n):
    return rng.uniform(low, high, n).astype(np.float32)


def sample_scenes(rng, shape_ids, colour_ids, style_ids, cluttered, hue_shift=0.0):
    """Draw every random parameter of a batch of scenes (in a fixed order, for determinism).

    `cluttered` (bool) and `hue_shift` (degrees, the camera's colour response) are not random:
    scalars or one value per image.
    """
    shape_ids = np.asarray(shape_ids, dtype=np.int64)
    colour_ids = np.asarray(colour_ids, dtype=np.int64)
    style_ids = np.asarray(style_ids, dtype=np.int64)
    cluttered = np.broadcast_to(np.asarray(cluttered, dtype=bool), shape_ids.shape).copy()
    n = len(shape_ids)
    style = np.array(STYLES)[style_ids]

    radius = _u(rng, 10.0, 17.0, n)
    radius = np.where(style == "small", _u(rng, 4.5, 7.0, n), radius)
    radius = np.where(style == "large", _u(rng, 22.0, 27.0, n), radius)
    radius = np.where(style == "cropped", _u(rng, 24.0, 32.0, n), radius)
    margin = np.where(style == "large", radius - 2.0, radius + 1.0)
    frac = rng.uniform(0.0, 1.0, (n, 2)).astype(np.float32)
    lo, hi = margin, IMAGE_SIZE - margin
    centre = lo[:, None] + frac * np.maximum(hi - lo, 0.0)[:, None]
    # Cropped: push the centre off-centre so that a good part of the shape leaves the frame.
    angle = _u(rng, 0.0, 2 * np.pi, n)
    offset = _u(rng, 0.55, 0.8, n) * radius
    off_centre = IMAGE_SIZE / 2 + offset[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    centre = np.where((style == "cropped")[:, None], off_centre, centre).astype(np.float32)

    rgb = np.array([COLOUR_RGB[COLOURS[c]] for c in colour_ids], dtype=np.float32).reshape(n, 3)
    rgb = rgb + _u(rng, -0.08, 0.08, (n, 3)).reshape(n, 3)
    rgb = np.clip(rgb * _u(rng, 0.85, 1.1, n)[:, None], 0.0, 1.0)

    grey = _u(rng, 0.25, 0.85, (n, 2)).reshape(n, 2)
    bg = grey[:, :, None] + _u(rng, -0.07, 0.07, (n, 2, 3)).reshape(n, 2, 3)
    paper = _u(rng, 0.88, 0.98, n)[:, None] + _u(rng, -0.02, 0.02, (n, 3)).reshape(n, 3)
    sketch = style == "sketch"
    bg = np.where(sketch[:, None, None], paper[:, None, :], bg)

    return {
        "shape_ids": shape_ids,
        "colour_ids": colour_ids,
        "style_ids": style_ids,
        "cluttered": cluttered,
        "radius": radius,
        "centre": centre,
        "hue_shift": np.broadcast_to(np.asarray(hue_shift, dtype=np.float32), shape_ids.shape).copy(),
        "rotation": _u(rng, 0.0, 2 * np.pi, n),
        "rgb": rgb,
        "background": np.clip(bg, 0.0, 1.0),
        "gradient_angle": _u(rng, 0.0, 2 * np.pi, n),
        "line_width": _u(rng, 1.2, 2.2, n),
        "texture_kind": rng.integers(0, 2, n),
        "texture_period": _u(rng, 4.0, 7.0, n),
        "texture_angle": _u(rng, 0.0, np.pi, n),
        "clutter_ends": rng.uniform(0, IMAGE_SIZE, (n, _N_CLUTTER_LINES, 4)).astype(np.float32),
        "clutter_width": rng.uniform(0.7, 1.5, (n, _N_CLUTTER_LINES)).astype(np.float32),
        "clutter_grey": rng.uniform(0.05, 0.95, (n, _N_CLUTTER_LINES)).astype(np.float32),
        "clutter_tint": rng.uniform(-0.15, 0.15, (n, _N_CLUTTER_LINES, 3)).astype(np.float32),
        "clutter_alpha": rng.uniform(0.4, 0.9, (n, _N_CLUTTER_LINES)).astype(np.float32),
        "blur_sigma": _u(rng, 1.3, 2.2, n),
        "pixel_block": rng.choice(np.array([6, 8]), n),
        "dark_gain": _u(rng, 0.22, 0.4, n),
        "bright_keep": _u(rng, 0.25, 0.45, n),
        "noise_sigma": _u(rng, 0.10, 0.18, n),
        # Pixel noise is drawn for the noisy images only (it is the bulk of the random draws).
        "noise": rng.standard_normal(
            (int(np.sum(style == "noisy")), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32
        ),
    }


def _blur(img, sigma):
    radius = 6
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    weights = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(1, keepdims=True)).astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        out = np.zeros_like(img)
        for k in range(2 * radius + 1):
            window = np.take(padded, np.arange(k, k + IMAGE_SIZE), axis=axis)
            out += weights[:, k, None, None, None] * window
        img = out
    return img


def _pixelate(img, block):
    out = img.copy()
    for b in np.unique(block):
        idx = np.nonzero(block == b)[0]
        size = -(-IMAGE_SIZE // b) * b
        pad = size - IMAGE_SIZE
        x = np.pad(img[idx], [(0, 0), (0, pad), (0, pad), (0, 0)], mode="edge")
        cells = x.reshape(len(idx), size // b, b, size // b, b, 3).mean(axis=(2, 4))
        x = np.repeat(np.repeat(cells, b, axis=1), b, axis=2)
        out[idx] = x[:, :IMAGE_SIZE, :IMAGE_SIZE]
    return out


def _segment_distance(x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = ((_XX - x0) * dx + (_YY - y0) * dy) / np.maximum(dx * dx + dy * dy, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(_XX - (x0 + t * dx), _YY - (y0 + t * dy))


def hue_rotation(degrees):
    """3x3 matrix rotating RGB colours by `degrees` about the grey axis (greys stay grey)."""
    a = np.deg2rad(degrees)
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return (np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross).astype(np.float32)


def _apply_camera(img, hue_shift):
    for degrees in np.unique(hue_shift):
        if degrees == 0:
            continue
        idx = np.nonzero(hue_shift == degrees)[0]
        m = hue_rotation(degrees)
        x = img[idx]
        # Written out channel by channel: elementwise float32 ops keep the result independent
        # of BLAS threading, hence byte-identical images.
        img[idx] = np.stack(
            [x[..., 0] * m[c, 0] + x[..., 1] * m[c, 1] + x[..., 2] * m[c, 2] for c in range(3)], -1
        )
    return np.clip(img, 0.0, 1.0)


def _ex(a):
    """Per-image values (n,) -> (n, 1, 1) to broadcast over pixels."""
    return a[:, None, None]


def _draw_clutter(img, p):
    for k in range(_N_CLUTTER_LINES):
        e = p["clutter_ends"][:, k]
        dist = _segment_distance(_ex(e[:, 0]), _ex(e[:, 1]), _ex(e[:, 2]), _ex(e[:, 3]))
        cover = np.clip(_ex(p["clutter_width"][:, k]) / 2 + 0.5 - dist, 0.0, 1.0)
        cover = (cover * _ex(p["clutter_alpha"][:, k]))[..., None]
        colour = np.clip(p["clutter_grey"][:, k, None] + p["clutter_tint"][:, k], 0.0, 1.0)
        img = img * (1 - cover) + colour[:, None, None, :] * cover
    return img


def _texture(p, idx):
    ta, period = p["texture_angle"][idx], p["texture_period"][idx]
    along = (_XX * _ex(np.cos(ta)) + _YY * _ex(np.sin(ta))) / _ex(period)
    across = (-_XX * _ex(np.sin(ta)) + _YY * _ex(np.cos(ta))) / _ex(period)
    stripes = np.sin(2 * np.pi * along)
    checks = stripes * np.sin(2 * np.pi * across)
    pattern = np.where(_ex(p["texture_kind"][idx] == 0), stripes, checks)
    pattern = np.clip(pattern * 2.0 + 0.5, 0.0, 1.0)  # soft-edged binary pattern
    return p["rgb"][idx, None, None, :] * (1.0 - 0.6 * pattern[..., None])


def draw_scenes(p):
    """Render scenes drawn by `sample_scenes` to uint8 images of shape (n, 64, 64, 3)."""
    n = len(p["shape_ids"])
    style = np.array(STYLES)[p["style_ids"]]
    where = lambda name: np.nonzero(style == name)[0]

    # Background: a linear gradient between two tints (flat paper for sketches).
    ga = p["gradient_angle"]
    t = ((_XX - 32) * _ex(np.cos(ga)) + (_YY - 32) * _ex(np.sin(ga))) / IMAGE_SIZE + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    bg = p["background"]
    img = bg[:, None, None, 0, :] * (1 - t) + bg[:, None, None, 1, :] * t

    # Clutter: thin line segments of unrelated, desaturated colours.
    idx = np.nonzero(p["cluttered"])[0]
    if len(idx):
        img[idx] = _draw_clutter(img[idx], {k: v[idx] for k, v in p.items() if k.startswith("clutter_")})

    # The shape, in local coordinates (unit ~ radius), then anti-aliased coverage.
    cx, cy = p["centre"][:, 0], p["centre"][:, 1]
    rot, radius = p["rotation"], p["radius"]
    dx, dy = _XX - _ex(cx), _YY - _ex(cy)
    u = (dx * _ex(np.cos(rot)) + dy * _ex(np.sin(rot))) / _ex(radius)
    v = (-dx * _ex(np.sin(rot)) + dy * _ex(np.cos(rot))) / _ex(radius)
    dist = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for si, name in enumerate(SHAPES):
        idx = np.nonzero(p["shape_ids"] == si)[0]
        if len(idx):
            dist[idx] = _SDFS[name](u[idx], v[idx]).astype(np.float32) * _ex(radius[idx])
    cover = np.clip(0.5 - dist, 0.0, 1.0)
    idx = where("sketch")
    if len(idx):
        cover[idx] = np.clip(_ex(p["line_width"][idx]) / 2 + 0.5 - np.abs(dist[idx]), 0.0, 1.0)
    cover = cover[..., None]

    fill = np.broadcast_to(p["rgb"][:, None, None, :], img.shape).copy()
    idx = where("textured")
    if len(idx):
        fill[idx] = _texture(p, idx)
    img = img * (1 - cover) + fill * cover
    img = _apply_camera(img, p["hue_shift"])

    # Photometric styles.
    idx = where("blurry")
    if len(idx):
        img[idx] = _blur(img[idx], p["blur_sigma"][idx])
    idx = where("pixelated")
    if len(idx):
        img[idx] = _pixelate(img[idx], p["pixel_block"][idx])
    idx = where("dark")
    img[idx] = img[idx] * _ex(p["dark_gain"][idx])[..., None]
    idx = where("bright")
    img[idx] = 1.0 - (1.0 - img[idx]) * _ex(p["bright_keep"][idx])[..., None]
    idx = where("noisy")
    img[idx] = img[idx] + p["noise"] * _ex(p["noise_sigma"][idx])[..., None]
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render(rng, shape_ids, colour_ids, style_ids, cluttered, hue_shift=0.0):
    """uint8 images (n, 64, 64, 3) of the given shapes/colours/styles (indices into the lists)."""
    return draw_scenes(sample_scenes(rng, shape_ids, colour_ids, style_ids, cluttered, hue_shift))


def to_tensor(images):
    """uint8 (n, H, W, 3) -> CLIP-normalised float tensor (n, 3, H, W)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The downstream (prompt-learning) dataset
# ---------------------------------------------------------------------------------------------

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "unseen": 3}


def _class_stream(seed, split, name, n):
    """The random stream of (seed, split, class) and its balanced styles (its first draw)."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], ALL_CLASSNAMES.index(name)])
    return rng, rng.permutation(np.resize(np.arange(len(STYLES)), n))


def render_class_set(seed, split, name, n, shifted=True):
    """n downstream images (cluttered, downstream camera, styles balanced) of class `name`.

    Returns (uint8 images, style indices). Each (seed, split, class) has its own random stream,
    so a class's images do not depend on the other classes or on the split sizes of others.
    shifted=False gives the same scenes without clutter and with the pretraining camera
    (to measure the effect of the shift).
    """
    rng, style_ids = _class_stream(seed, split, name, n)
    shape_index, colour_index = class_parts(name)
    hue_shift = DOWNSTREAM_HUE_SHIFT if shifted else 0.0
    images = render(rng, [shape_index] * n, [colour_index] * n, style_ids, shifted, hue_shift)
    return images, style_ids


def render_split(seed, split, n_per_class=None, classnames=None, shifted=True):
    """(images, labels, style indices) of a split; labels index `classnames` (default CLASSNAMES).

    With the defaults this is exactly the content of the generated dataset's split
    (split "unseen" with classnames=UNSEEN_CLASSNAMES gives the never-rendered compositions).
    """
    classnames = CLASSNAMES if classnames is None else classnames
    n = SPLIT_SIZES.get(split, SPLIT_SIZES["test"]) if n_per_class is None else n_per_class
    images, labels, styles = [], [], []
    for label, name in enumerate(classnames):
        imgs, style_ids = render_class_set(seed, split, name, n, shifted)
        images.append(imgs)
        labels += [label] * n
        styles.append(style_ids)
    return np.concatenate(images), np.array(labels), np.concatenate(styles)


def _png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _image_path(name, split, i, style_index):
    return f"{class_folder(name)}/{split}_{i:03d}_{STYLES[style_index]}.png"


def world_split(seed=DEFAULT_SEED, split_sizes=None):
    """The split file's content {split: [[path under images/, label, classname], ...]}.

    Cheap (renders nothing): `generate` uses it to reject a different world early.
    """
    split_sizes = dict(SPLIT_SIZES if split_sizes is None else split_sizes)
    split = {}
    for split_name, n in split_sizes.items():
        split[split_name] = [
            [_image_path(name, split_name, i, style_index), label, name]
            for label, name in enumerate(CLASSNAMES)
            for i, style_index in enumerate(_class_stream(seed, split_name, name, n)[1])
        ]
    return split


def build_world_files(seed=DEFAULT_SEED, split_sizes=None):
    """Every file of the dataset as {relative path under demo_world/: bytes}."""
    split_sizes = dict(SPLIT_SIZES if split_sizes is None else split_sizes)
    files = {}
    for split_name, n in split_sizes.items():
        for name in CLASSNAMES:
            images, style_ids = render_class_set(seed, split_name, name, n)
            for i, (image, style_index) in enumerate(zip(images, style_ids)):
                files[f"{IMAGE_DIR}/{_image_path(name, split_name, i, style_index)}"] = _png_bytes(image)
    files[SPLIT_FILE] = _split_json(world_split(seed, split_sizes)).encode()
    return files


def _split_json(split):
    """The split as JSON with one row per line (readable, and diffs stay small)."""
    parts = []
    for name, rows in split.items():
        body = ",\n".join("    " + json.dumps(row) for row in rows)
        parts.append(f"  {json.dumps(name)}: [\n{body}\n  ]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _read(path):
    with open(path, "rb") as f:
        return f.read()


# Written into the dataset folder by the few-shot sampler of datasets/coop_dataset.py.
FEWSHOT_CACHE_DIR = "split_fewshot"


def _existing_files(directory):
    """Files of the world in `directory` (the few-shot caches of training runs excluded)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        if dirpath == directory and FEWSHOT_CACHE_DIR in dirnames:
            dirnames.remove(FEWSHOT_CACHE_DIR)
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            found[os.path.relpath(path, directory).replace(os.sep, "/")] = _read(path)
    return found


def generate(root, seed=DEFAULT_SEED, split_sizes=None, log=print):
    """Write <root>/demo_world (images + split file); return its path.

    An existing identical world is left as it is; an existing different one is an error.
    """
    target = os.path.join(root, DATASET_DIR)
    different = FileExistsError(
        f"{target} exists and differs from the world that seed {seed} generates. "
        "Delete it yourself, or pass another --root."
    )
    if os.path.exists(target):
        split_path = os.path.join(target, SPLIT_FILE)
        expected = _split_json(world_split(seed, split_sizes)).encode()
        if not os.path.isfile(split_path) or _read(split_path) != expected:
            raise different
    files = build_world_files(seed, split_sizes)
    if os.path.exists(target):
        if _existing_files(target) != files:
            raise different
        log(f"{target} already holds this world (seed {seed}): nothing to do.")
        return target
    os.makedirs(root, exist_ok=True)
    # Written to a sibling temporary folder then renamed, so that an interrupted run leaves
    # no half-written world behind.
    staging = tempfile.mkdtemp(prefix=".demo_world-", dir=root)
    try:
        for rel, data in files.items():
            path = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n_images = len(files) - 1
    log(f"Wrote {n_images} images and {SPLIT_FILE} to {target}")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset root (DATASET.ROOT)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    try:
        generate(args.root, args.seed)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
