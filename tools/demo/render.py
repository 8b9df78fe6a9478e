"""Rendering the demo world's scenes (numpy, vectorised over a batch; float32 elementwise ops
only, so deterministic): shapes as signed distance fields, styles as photometric effects."""

import numpy as np

from tools.demo.world import COLOUR_RGB, COLOURS, IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD, SHAPES, STYLES

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
