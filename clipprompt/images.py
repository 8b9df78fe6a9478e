"""Image files as RGB, read the same way by every path of the repository: training and evaluation
(Dassl's data loaders, through `datasets.loading`), predict.py, exported classifiers and the
start-up image check.

PIL's `convert("RGB")`, which Dassl's `read_image` calls, clips pixels of more than 8 bits to
255 and maps floats below 1 to 0, so a 16-bit grayscale PNG or TIFF reads as pure white and a
float TIFF in [0, 1] as black. Here such pixels are scaled to 8 bits instead:

- 16-bit integers (PIL modes `I;16*`): 0 .. 65535 -> 0 .. 255 (v / 257, rounded);
- 32-bit integers (mode `I`, which also holds 16-bit PNGs in some PIL versions): values within
  0 .. 65535 as 16-bit ones; larger or negative values have no known white level: an error;
- 32-bit floats (mode `F`): values within [0, 1] -> 0 .. 255; values within [0, 255] (with some
  above 1) are taken as 8-bit values, as PIL takes them; other ranges are an error.

Every other mode (8-bit grayscale, palette, RGB(A), CMYK, and 16-bit RGB PNGs, which PIL reads
as 8-bit RGB itself) goes through PIL's `convert("RGB")`, as in Dassl.

PIL refuses images with more than twice `PIL.Image.MAX_IMAGE_PIXELS` pixels (a guard against
decompression bombs). The environment variable CLIPPROMPT_MAX_IMAGE_PIXELS replaces that
limit (a number of pixels, 0 for none) for every path above, including data-loader workers.
"""

import os

import numpy as np
from PIL import Image

PIXEL_LIMIT_ENV = "CLIPPROMPT_MAX_IMAGE_PIXELS"
WHITE_16 = 65535


def apply_pixel_limit():
    """Set PIL's decompression-bomb limit from CLIPPROMPT_MAX_IMAGE_PIXELS, when it is set."""
    value = os.environ.get(PIXEL_LIMIT_ENV)
    if value is None:
        return
    try:
        pixels = int(value)
    except ValueError:
        pixels = -1
    if pixels < 0:
        raise ValueError(f"{PIXEL_LIMIT_ENV}={value!r} must be a number of pixels (0: no limit)")
    Image.MAX_IMAGE_PIXELS = pixels or None


def open_image(path):
    """`PIL.Image.open(path)` under the configured pixel limit; a decompression bomb is an
    `ImageTooLarge` that names the file and says how to raise the limit."""
    apply_pixel_limit()
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(path, err) from None


class ImageTooLarge(ValueError):
    """An image over PIL's decompression-bomb limit; `reason` says so without the path."""

    def __init__(self, path, err):
        self.reason = (
            f"{type(err).__name__}: {err} If the image is genuine, downscale it or raise the limit: "
            f"environment variable {PIXEL_LIMIT_ENV}=<pixels>, 0 for none"
        )
        super().__init__(f"{path}: {self.reason}")


def to_rgb(image, name="the image"):
    """An 8-bit RGB PIL image of `image`, scaled as the module docstring says (`name` names it in
    errors)."""
    mode = image.mode
    if mode.startswith("I;16"):
        return _gray(np.asarray(image, dtype=np.float64) / (WHITE_16 / 255))
    if mode == "I":
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        if low < 0 or high > WHITE_16:
            raise ValueError(
                f"{name} has 32-bit integer pixels from {low:.0f} to {high:.0f}, which have no known "
                "white level: save it with 8 or 16 bits per channel"
            )
        return _gray(values / (WHITE_16 / 255))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
            raise ValueError(
                f"{name} has float pixels from {low} to {high}: float images must lie within [0, 1] "
                "(or [0, 255]); save it with 8 or 16 bits per channel"
            )
        return _gray(values * 255 if high <= 1 else values)
    return image.convert("RGB")


def _gray(values):
    return Image.fromarray(np.rint(values).astype(np.uint8)).convert("RGB")


def open_rgb(path):
    """The image file `path` as an 8-bit RGB PIL image (`to_rgb`)."""
    with open_image(path) as image:
        return to_rgb(image, str(path))
