"""Image files that PIL's convert("RGB") gets wrong or refuses, on every path that reads images:
training and evaluation (the trainer's data loaders), predict.py and exported classifiers read
16-bit and float images as their 8-bit copies, and an image over PIL's decompression-bomb limit
is a bad image that is named (skipped with --skip-bad) and says how to raise the limit."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import predict
import trainers
from clipprompt import exported
from tests.e2e import PETS, TINY_OPTS
from tests.image_folders import user_config, write_images
from tests.saved_runs import saved_run

ZEROSHOT = "configs/trainers/ZeroshotCLIP/vit_b16.yaml"
COOP = "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"


def png(width, height, bit_depth, color_type, rows):
    """PNG bytes of raw `rows` (bytes per row, filter 0 added here)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def write_png16(path, pixels):
    """A 16-bit grayscale ([H, W]) or RGB ([H, W, 3]) PNG (PIL writes no 16-bit RGB)."""
    pixels = np.asarray(pixels, dtype=">u2")
    color_type = 0 if pixels.ndim == 2 else 2
    rows = [row.tobytes() for row in pixels]
    with open(path, "wb") as f:
        f.write(png(pixels.shape[1], pixels.shape[0], 16, color_type, rows))


def picture(channels):
    """An 8-bit picture (40 x 48) that uses every grey level."""
    y, x = np.mgrid[0:40, 0:48]
    planes = [(y * 6 + x * 5 + 70 * c) % 256 for c in range(channels)]
    return np.stack(planes, axis=-1).astype(np.uint8).squeeze()


def write_variants(folder):
    """{file name: 8-bit RGB copy of its picture} for the same pictures in 8, 16 and 32 bits."""
    os.makedirs(folder, exist_ok=True)
    gray, rgb = picture(1), picture(3)
    write_png16(os.path.join(folder, "gray16.png"), gray.astype(np.uint16) * 257)
    write_png16(os.path.join(folder, "rgb16.png"), rgb.astype(np.uint16) * 257)
    Image.fromarray(gray.astype(np.float32) / 255).save(os.path.join(folder, "gray_float.tif"))
    Image.fromarray(gray.astype(np.int32) * 257).save(os.path.join(folder, "gray_int32.tif"))
    Image.fromarray(gray).save(os.path.join(folder, "gray8.png"))
    gray_rgb = np.stack([gray] * 3, axis=-1)
    return {"gray16.png": gray_rgb, "rgb16.png": rgb, "gray_float.tif": gray_rgb, "gray_int32.tif": gray_rgb}


def test_high_bit_depth_files_open_as_their_8_bit_copies(tmp_path):
    from clipprompt.images import open_rgb

    for name, copy in write_variants(tmp_path).items():
        image = open_rgb(tmp_path / name)
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), copy), name


@pytest.mark.parametrize(
    "array, message",
    [
        (
            np.full((4, 4), 70000, np.int32),
            "32-bit integer pixels from 70000 to 70000, which have no known white",
        ),
        (
            np.full((4, 4), 300.0, np.float32),
            "float pixels from 300.0 to 300.0: float images must lie within",
        ),
    ],
)
def test_pixels_without_a_known_white_level_are_an_error_naming_the_file(tmp_path, array, message):
    from clipprompt.images import open_rgb

    path = tmp_path / "odd.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(ValueError, match=f"{path} has {message}"):
        open_rgb(path)


@pytest.mark.e2e
def test_predict_and_exported_classifiers_read_them_as_their_8_bit_copies(tmp_path):
    copies = write_variants(tmp_path)
    for name, copy in copies.items():
        Image.fromarray(copy).save(tmp_path / f"{name}.copy.png")
    as_array = np.asarray
    for name in copies:
        path, copy = str(tmp_path / name), str(tmp_path / f"{name}.copy.png")
        files = predict.ImageFiles([path, copy], lambda image: torch.from_numpy(as_array(image).copy()))
        assert torch.equal(files[0][1], files[1][1]), f"predict.py: {name}"
        assert np.array_equal(as_array(exported._rgb(path)), as_array(exported._rgb(copy))), (
            f"exported: {name}"
        )


def test_training_and_evaluation_read_them_as_their_8_bit_copies(tmp_path, tiny_clip_path):
    """The trainer's data loaders (Dassl's data manager) on an ImageFolder whose test split holds
    the files (class a) and their 8-bit copies (class b)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_images(tmp_path / "mine" / "train" / name, 2, rng)
    copies = write_variants(tmp_path / "mine" / "test" / "a")
    os.makedirs(tmp_path / "mine" / "test" / "b")
    for name, copy in copies.items():
        Image.fromarray(copy).save(tmp_path / "mine" / "test" / "b" / f"{name}.png")
    config = user_config(tmp_path / "mine.yaml", "mine")
    opts = ["MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS]
    cfg = trainers.make_cfg("ZeroshotCLIP", config, ZEROSHOT, opts, root=str(tmp_path))
    loader = trainers.build_trainer(cfg).test_loader
    images = {os.path.basename(item["impath"]): item["img"] for item in loader.dataset}
    for name in copies:
        assert torch.equal(images[name], images[f"{name}.png"]), name


def write_bomb(path):
    """A small PNG whose header declares 15000 x 15000 pixels (over twice PIL's default limit)."""
    with open(path, "wb") as f:
        f.write(png(15000, 15000, 8, 0, [bytes(15000)]))
    return str(path)


def test_a_decompression_bomb_fails_the_start_up_check_by_name(tmp_path):
    from dassl.data.datasets import build_dataset

    from tests.test_image_folder import make_cfg

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            write_images(tmp_path / "mine" / split / name, 1, rng)
    bomb = write_bomb(tmp_path / "mine" / "test" / "a" / "huge.png")
    with pytest.raises(ValueError) as err:
        build_dataset(make_cfg(tmp_path))
    message = str(err.value)
    assert f"1 of the 5 listed images cannot be opened: {bomb} (DecompressionBombError: Image size" in message
    assert "raise the limit: environment variable CLIPPROMPT_MAX_IMAGE_PIXELS=<pixels>, 0 for none" in message


def test_predict_names_a_decompression_bomb_and_skips_it_when_asked(pets, tiny_clip_path, tmp_path, capsys):
    opts = ["MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS, "DATASET.SUBSAMPLE_CLASSES", "base"]
    cfg = trainers.make_cfg("CoOp", PETS, COOP, opts, root=pets, seed=1)
    run = str(tmp_path / "run")
    saved_run(cfg, run)
    good, bomb = str(tmp_path / "good.png"), write_bomb(tmp_path / "huge.png")
    Image.fromarray(picture(3)).save(good)
    out = tmp_path / "preds.jsonl"
    with pytest.raises(SystemExit) as err:
        predict.main(["--model-dir", run, "--output", str(out), good, bomb])
    assert f"1 of 2 images cannot be read: {bomb} (DecompressionBombError: " in str(err.value)
    assert "CLIPPROMPT_MAX_IMAGE_PIXELS=<pixels>" in str(err.value) and not out.exists()
    predict.main(["--model-dir", run, "--output", str(out), "--skip-bad", good, bomb])
    records = predict_records(out)
    assert records[0]["error"] is None and records[1]["error"].startswith("DecompressionBombError: ")
    assert "Predicted 1 images" in capsys.readouterr().out


def predict_records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_the_pixel_limit_is_raised_by_the_environment(tmp_path, monkeypatch):
    from datasets.image_check import unreadable_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    path = tmp_path / "photo.png"
    Image.fromarray(picture(3)).save(path)  # 40 x 48 = 1,920 pixels
    monkeypatch.setenv("CLIPPROMPT_MAX_IMAGE_PIXELS", "900")
    assert unreadable_image(path).startswith("DecompressionBombError: Image size (1920 pixels) exceeds limit")
    monkeypatch.setenv("CLIPPROMPT_MAX_IMAGE_PIXELS", "0")
    assert unreadable_image(path) is None and Image.MAX_IMAGE_PIXELS is None
