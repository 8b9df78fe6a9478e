"""The demo world generator and the tiny-CLIP pretraining script (no Dassl needed)."""

import gzip
import io
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from clipprompt.clip_loading import build_model, clip, load_clip
from clipprompt.towers import is_vit
from tests.conftest import ROOT
from tools.demo import dataset, pretrain, world
from tools.demo.captions import pretraining_batch
from tools.demo.render import hue_rotation, render, to_tensor

TINY_SPLITS = {"train": 2, "val": 1, "test": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(directory):
    files = {}
    for dirpath, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


# --- the world's facts ---------------------------------------------------------------------------


def test_compositions_partition_the_world():
    assert len(world.SHAPES) == 10 and len(world.COLOURS) == 5
    assert len(world.BASE_CLASSNAMES) == len(world.NEW_CLASSNAMES) == 20
    assert len(world.UNSEEN_CLASSNAMES) == 10
    assert len(set(world.ALL_CLASSNAMES)) == 50
    assert world.CLASSNAMES == world.BASE_CLASSNAMES + world.NEW_CLASSNAMES
    for names in (world.BASE_CLASSNAMES, world.NEW_CLASSNAMES, world.UNSEEN_CLASSNAMES):
        # every shape and every colour occurs in base, new and never-rendered classes
        assert {world.class_parts(n)[0] for n in names} == set(range(10))
        assert {world.class_parts(n)[1] for n in names} == set(range(5))
    for name in world.ALL_CLASSNAMES:
        assert "_" not in name and re.fullmatch(r"[a-z]+ [a-z]+", name)


def test_labels_put_base_classes_first():
    labels = sorted(range(len(world.CLASSNAMES)))
    n_base = math.ceil(len(labels) / 2)  # the repository's base/new rule
    assert [world.CLASSNAMES[i] for i in labels[:n_base]] == list(world.BASE_CLASSNAMES)
    assert [world.CLASSNAMES[i] for i in labels[n_base:]] == list(world.NEW_CLASSNAMES)
    assert world.BASE_LABELS == tuple(range(20)) and world.NEW_LABELS == tuple(range(20, 40))
    assert world.label_of(world.NEW_CLASSNAMES[0]) == 20


def test_style_templates_have_one_placeholder():
    assert tuple(world.STYLE_TEMPLATES) == world.STYLES and len(world.STYLES) == 11
    templates = list(world.STYLE_TEMPLATES.values()) + [world.GENERIC_TEMPLATE]
    for template in templates:
        assert template.count("{}") == 1
    assert len(set(templates)) == len(templates)
    assert world.STYLE_TEMPLATES["blurry"] == "a blurry photo of a {}."
    assert world.STYLE_TEMPLATES["sketch"] == "a sketch of a {}."


# --- rendering and captions ------------------------------------------------------------------------


def test_render_is_deterministic_and_covers_all_styles():
    n = len(world.STYLES)
    args = ([3] * n, [1] * n, list(range(n)), True)
    a = render(np.random.default_rng(5), *args)
    b = render(np.random.default_rng(5), *args)
    assert a.shape == (n, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len({img.tobytes() for img in a}) == n


def test_downstream_camera_shifts_colours_but_not_greys():
    m = hue_rotation(world.DOWNSTREAM_HUE_SHIFT)
    np.testing.assert_allclose(m @ np.full(3, 0.4), np.full(3, 0.4), atol=1e-6)
    assert not np.allclose(m @ np.array(world.COLOUR_RGB["red"]), world.COLOUR_RGB["red"], atol=0.05)
    shifted, labels, styles = dataset.render_split(0, "val", n_per_class=1)
    plain, labels_plain, styles_plain = dataset.render_split(0, "val", n_per_class=1, shifted=False)
    assert np.array_equal(labels, labels_plain) and np.array_equal(styles, styles_plain)
    assert not np.array_equal(shifted, plain)


def test_pretraining_captions_name_one_seen_composition():
    images, captions = pretraining_batch(np.random.default_rng(0), 64)
    assert images.shape == (64, 64, 64, 3) and len(captions) == 64
    unseen = {world.class_parts(n) for n in world.UNSEEN_CLASSNAMES}
    for caption in captions:
        words = re.findall(r"[a-z]+", caption)
        shapes = [i for i, s in enumerate(world.SHAPES) if s in words]
        colours = [i for i, c in enumerate(world.COLOURS) if c in words]
        assert len(shapes) == 1 and len(colours) == 1, caption
        assert (shapes[0], colours[0]) not in unseen, caption
        assert not re.search(r"\ba [aeiou]", caption), caption
        assert len(clip.tokenize(caption)[0].nonzero()) < 40


# --- the generated dataset --------------------------------------------------------------------------


def test_generator_is_deterministic_and_refuses_to_overwrite(tmp_path):
    a = dataset.generate(str(tmp_path / "a"), seed=3, split_sizes=TINY_SPLITS, log=lambda *_: None)
    b = dataset.generate(str(tmp_path / "b"), seed=3, split_sizes=TINY_SPLITS, log=lambda *_: None)
    assert _tree(a) == _tree(b)
    c = dataset.generate(str(tmp_path / "c"), seed=4, split_sizes=TINY_SPLITS, log=lambda *_: None)
    assert _tree(c) != _tree(a)

    messages = []
    dataset.generate(str(tmp_path / "a"), seed=3, split_sizes=TINY_SPLITS, log=messages.append)
    assert "nothing to do" in messages[0]
    with pytest.raises(FileExistsError, match="differs"):
        dataset.generate(str(tmp_path / "a"), seed=4, split_sizes=TINY_SPLITS)
    assert _tree(a) == _tree(b)
    assert sorted(os.listdir(tmp_path / "a")) == [world.DATASET_DIR]  # no staging leftovers


def test_generated_layout_and_split_file(tmp_path):
    target = dataset.generate(str(tmp_path), seed=0, split_sizes=TINY_SPLITS, log=lambda *_: None)
    assert target == os.path.join(str(tmp_path), "demo_world")
    with open(os.path.join(target, "split_zhou_DemoWorld.json")) as f:
        split = json.load(f)
    assert list(split) == ["train", "val", "test"]
    on_disk = set()
    for dirpath, _, names in os.walk(os.path.join(target, "images")):
        on_disk |= {os.path.relpath(os.path.join(dirpath, n), os.path.join(target, "images")) for n in names}
    listed = set()
    for name, rows in split.items():
        assert len(rows) == TINY_SPLITS[name] * 40
        assert sorted({r[1] for r in rows}) == list(range(40))
        for path, label, classname in rows:
            assert isinstance(path, str) and isinstance(label, int) and isinstance(classname, str)
            assert classname == world.CLASSNAMES[label]
            assert path.split("/")[0] == world.class_folder(classname)
            assert path.rsplit("_", 1)[1][:-4] in world.STYLES
            listed.add(path)
    assert listed == on_disk
    with Image.open(os.path.join(target, "images", split["test"][0][0])) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    # the files hold exactly what render_split gives the evaluation
    images, labels, styles = dataset.render_split(0, "test", n_per_class=2)
    row = split["test"][3]
    with Image.open(os.path.join(target, "images", row[0])) as image:
        assert np.array_equal(np.asarray(image), images[3])
    assert labels[3] == row[1] and world.STYLES[styles[3]] in row[0]


@pytest.mark.e2e
def test_cli_reports_an_existing_different_world(tmp_path, capsys):
    os.makedirs(tmp_path / "demo_world")
    (tmp_path / "demo_world" / "stray.txt").write_text("x")
    assert dataset.main(["--root", str(tmp_path)]) == 1
    assert "demo_world" in capsys.readouterr().err


# --- pretraining and the checkpoint -----------------------------------------------------------------


def test_truncated_text_encoder_matches_clip():
    model = pretrain.build_demo_clip(0)
    tokens = clip.tokenize(["a blurry photo of a red star.", "a star.", "an outline of a green arrow"])
    with torch.no_grad():
        torch.testing.assert_close(pretrain.encode_text(model, tokens), model.encode_text(tokens))


def _tiny_pretrain(arch="rn"):
    return pretrain.pretrain(steps=2, seed=0, batch_size=8, warmup=1, log=lambda *_: None, arch=arch)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    model, used = _tiny_pretrain()
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt.gz")
    pretrain.save_checkpoint(model, used, path)
    return model, used, path


def test_pretraining_is_deterministic(tiny_run):
    model, used, _ = tiny_run
    again, used_again = _tiny_pretrain()
    assert torch.equal(used, used_again)
    assert pretrain.compressed_state_dict(model, used) == pretrain.compressed_state_dict(again, used_again)


def test_the_vit_variant_pretrains_deterministically_and_rebuilds(tmp_path):
    model, used = _tiny_pretrain("vit")
    again, used_again = _tiny_pretrain("vit")
    assert pretrain.compressed_state_dict(model, used) == pretrain.compressed_state_dict(again, used_again)
    path = str(tmp_path / "vit.pt.gz")
    pretrain.save_checkpoint(model, used, path)
    rebuilt = load_clip(path)
    assert is_vit(rebuilt.visual) and rebuilt.visual.input_resolution == 64
    assert (len(rebuilt.visual.transformer.resblocks), rebuilt.visual.conv1.weight.shape[0]) == (4, 128)
    assert len(rebuilt.transformer.resblocks) == 3  # the ResNet variant's text tower


def test_checkpoint_round_trips_through_build_model(tiny_run):
    model, used, path = tiny_run
    assert os.path.getsize(path) < 20 * 2**20
    with open(path, "rb") as f:
        state = torch.load(io.BytesIO(gzip.decompress(f.read())), map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    assert state["token_embedding.weight"].dtype == torch.float16
    assert not state["token_embedding.weight"][~used].any()
    rebuilt = build_model(dict(state)).float().eval()
    # build_model inferred the architecture of the trained model
    assert rebuilt.visual.input_resolution == 64
    assert rebuilt.transformer.resblocks[0].attn.num_heads == 2
    assert [len(getattr(rebuilt.visual, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]

    # the same fp16-rounded weights in a fresh fp32 model give identical outputs
    reference = pretrain.build_demo_clip(1).eval()
    reference.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    images = to_tensor(render(np.random.default_rng(0), [0, 1], [2, 3], [0, 5], True))
    tokens = clip.tokenize(["a photo of a red circle.", "a sketch of a blue star."])
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_image(images), reference.encode_image(images))
        assert torch.equal(rebuilt.encode_text(tokens), reference.encode_text(tokens))
        # and they are the trained model's, up to fp16 rounding
        torch.testing.assert_close(
            rebuilt.encode_image(images), model.encode_image(images), atol=0.05, rtol=0.05
        )


@pytest.mark.e2e
def test_pretraining_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "model.pt.gz"
    out.write_bytes(b"not a checkpoint")
    assert pretrain.main(["--out", str(out), "--steps", "1"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"not a checkpoint"
    assert pretrain.main(["--out", str(tmp_path / "missing.pt.gz"), "--eval-only"]) == 1


@pytest.mark.parametrize("arch", ["rn", "vit"])
def test_committed_checkpoint_recognises_the_world(arch):
    checkpoint = os.path.join(ROOT, "assets", f"demo_clip_{arch}_tiny.pt.gz")
    assert os.path.isfile(checkpoint), (
        f"run python -m tools.pretrain_tiny_clip --arch {arch} --out assets/demo_clip_{arch}_tiny.pt.gz"
    )
    assert os.path.getsize(checkpoint) < 20 * 2**20
    model = load_clip(checkpoint)
    assert is_vit(model.visual) == (arch == "vit")
    images, labels, styles = dataset.render_split(0, "test", n_per_class=2)
    feats = pretrain.image_features(model, images)
    acc = pretrain.zero_shot_accuracies(model, feats, labels, styles, world.CLASSNAMES)
    assert acc["generic"] > 20  # 40-way, chance 2.5 %
