"""Every dataset reader on generated data in its real on-disk layout (tests/dataset_layouts.py)."""

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, build_dataset

import datasets
from tests import dataset_layouts as layouts
from tools.protocols import REGISTERED


def make_cfg(root, name, shots=-1, seed=-1, subsample="all", create_split=False, sampling="dassl"):
    cfg = get_cfg_default()
    datasets.add_config(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.CREATE_SPLIT = create_split
    cfg.DATASET.FEWSHOT_SAMPLING = sampling
    cfg.SEED = seed
    return cfg


def build(root, name, **kwargs):
    return build_dataset(make_cfg(root, name, **kwargs))


def rows(data, dataset_dir):
    return [(os.path.relpath(d.impath, dataset_dir), d.label, d.classname) for d in data]


def cache_path(generated, shots, seed):
    return os.path.join(generated.dataset_dir, "split_fewshot", f"shot_{shots}-seed_{seed}.json")


# ---- every reader in its real layout -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(layouts.MAKERS))
def test_reader_reads_its_layout(tmp_path, name):
    generated = layouts.MAKERS[name](tmp_path)
    ds = build(tmp_path, name)
    assert ds.all_classnames == generated.classnames
    assert ds.classnames == generated.classnames
    assert ds.lab2cname == dict(enumerate(generated.classnames))
    assert ds.num_classes == generated.num_classes
    assert ds.subsample == "all"
    assert len(ds.test) == generated.counts["test"]
    if name == "ImageNet":  # the official val set is the test set
        assert len(ds.train_x) == generated.counts["train"]
        assert ds.val is ds.test
    elif name.startswith("ImageNet"):  # test-only variants
        assert ds.train_x is ds.test and ds.val is None
    else:
        assert len(ds.train_x) == generated.counts["train"]
        assert len(ds.val) == generated.counts["val"]
    for d in ds.test:
        assert os.path.isfile(d.impath)
        assert d.classname == generated.classnames[d.label]
    assert {d.label for d in ds.test} == set(range(generated.num_classes))


def test_imagenet_a_keeps_present_classes_relabelled_in_classnames_order(tmp_path):
    layouts.make_imagenet_a(tmp_path, num_classes=6)
    ds = build(tmp_path, "ImageNetA")
    # Folders exist for classes 1, 3, 5 of classnames.txt; README.txt is not a class.
    assert ds.classnames == ["class name 1", "class name 3", "class name 5"]
    first = min(ds.test, key=lambda d: d.impath)
    assert first.label == 0 and "n00000001" in first.impath


def test_imagenetv2_folders_are_labels(tmp_path):
    layouts.make_imagenetv2(tmp_path, num_classes=3)
    ds = build(tmp_path, "ImageNetV2")
    for d in ds.test:
        assert os.path.basename(os.path.dirname(d.impath)) == str(d.label)


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    generated = layouts.make_stanford_cars(tmp_path)
    ds = build(tmp_path, "StanfordCars")
    assert {r[0].split(os.sep)[0] for r in rows(ds.test, generated.dataset_dir)} == {"cars_test"}


def test_class_names_are_kept_as_in_the_split_file(tmp_path):
    layouts.make_ucf101(tmp_path)
    assert build(tmp_path, "UCF101").classnames[0] == "Play_Instrument_000"


def test_protocol_datasets_are_registered():
    # tests/test_protocols.py checks that each config's DATASET.NAME is the name listed here.
    for name in REGISTERED.values():
        assert DATASET_REGISTRY.get(name).__module__.startswith("datasets."), name
    assert set(REGISTERED.values()) == set(layouts.MAKERS)


def test_add_config_declares_defaults():
    cfg = get_cfg_default()
    datasets.add_config(cfg)
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.DATASET.CREATE_SPLIT is False
    assert cfg.DATASET.FEWSHOT_SAMPLING == "dassl"


# ---- few-shot sampling and its cache -------------------------------------------------------


def test_few_shot_counts_and_cache_with_relative_paths(tmp_path, capsys):
    generated = layouts.make_dtd(tmp_path, per_class=(6, 6, 2))
    ds = build(tmp_path, "DescribableTextures", shots=5, seed=1)
    assert len(ds.train_x) == 5 * 3
    assert len(ds.val) == 4 * 3  # min(K, 4) from val
    assert len(ds.test) == generated.counts["test"]
    cache = cache_path(generated, 5, 1)
    assert capsys.readouterr().out.count(f"Saved few-shot sample to {cache}") == 1
    stored = json.loads(Path(cache).read_bytes())
    assert set(stored) == {"train", "val"}
    for path, _, _ in stored["train"] + stored["val"]:
        assert not os.path.isabs(path) and str(tmp_path) not in path
        assert path.startswith("images/")
    assert [tuple(r) for r in stored["train"]] == [
        (os.path.relpath(d.impath, generated.dataset_dir), d.label, d.classname) for d in ds.train_x
    ]


def test_few_shot_cache_survives_moving_the_root(tmp_path, capsys):
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    generated = layouts.make_food101(old_root, per_class=(6, 3, 2))
    before = build(old_root, "Food101", shots=2, seed=3)
    shutil.move(old_root, new_root)
    capsys.readouterr()
    after = build(new_root, "Food101", shots=2, seed=3)
    new_dir = os.path.join(new_root, "food-101")
    assert f"Reading few-shot sample from {new_dir}" in capsys.readouterr().out
    assert rows(after.train_x, new_dir) == rows(before.train_x, generated.dataset_dir)
    assert all(d.impath.startswith(str(new_root)) for d in after.train_x)


def test_existing_cache_is_read_not_regenerated(tmp_path):
    generated = layouts.make_dtd(tmp_path, per_class=(6, 3, 2))
    build(tmp_path, "DescribableTextures", shots=2, seed=1)
    cache = cache_path(generated, 2, 1)
    original = Path(cache).read_bytes()
    build(tmp_path, "DescribableTextures", shots=2, seed=1)
    assert Path(cache).read_bytes() == original
    # A hand-edited cache is used as it is (keep one train image only).
    stored = json.loads(original)
    stored["train"] = stored["train"][:1]
    edited = json.dumps(stored).encode()
    Path(cache).write_bytes(edited)
    ds = build(tmp_path, "DescribableTextures", shots=2, seed=1)
    assert len(ds.train_x) == 1
    assert Path(cache).read_bytes() == edited


def test_seeds_give_different_files_and_seed_zero_is_valid(tmp_path):
    generated = layouts.make_dtd(tmp_path, per_class=(10, 4, 2))
    seed0 = build(tmp_path, "DescribableTextures", shots=3, seed=0)
    seed1 = build(tmp_path, "DescribableTextures", shots=3, seed=1)
    assert os.path.isfile(cache_path(generated, 3, 0))
    assert os.path.isfile(cache_path(generated, 3, 1))
    assert [d.impath for d in seed0.train_x] != [d.impath for d in seed1.train_x]


def test_sampling_ignores_global_random_state(tmp_path):
    samples = []
    for i, global_seed in enumerate((123, 456)):
        root = tmp_path / str(i)
        generated = layouts.make_dtd(root, per_class=(10, 4, 2))
        random.seed(global_seed)
        ds = build(root, "DescribableTextures", shots=3, seed=7)
        samples.append(rows(ds.train_x, generated.dataset_dir))
    assert samples[0] == samples[1]


def test_negative_seed_samples_without_caching(tmp_path, capsys):
    generated = layouts.make_dtd(tmp_path, per_class=(6, 3, 2))
    ds = build(tmp_path, "DescribableTextures", shots=2, seed=-1)
    assert len(ds.train_x) == 2 * 3
    assert not os.path.exists(os.path.join(generated.dataset_dir, "split_fewshot"))
    assert "neither seeded nor cached" in capsys.readouterr().out


def lpclip_draws(samples, shots, rng):
    """lpclip/linear_probe.py's draws written out: per label in sorted order, np.random.choice of
    `shots` of the label's positions (in split order) without replacement."""
    labels = np.array([s[1] for s in samples])
    picked = []
    for label in np.unique(labels):
        picked.extend(rng.choice(np.where(labels == label)[0], size=shots, replace=False))
    return [samples[i] for i in picked]


@pytest.mark.parametrize("name", ["DescribableTextures", "ImageNet"])
def test_lpclip_sampling_draws_what_lpclip_draws(tmp_path, name):
    if name == "ImageNet":
        generated = layouts.make_imagenet(tmp_path, per_class=(9, 6))
    else:
        generated = layouts.make_dtd(tmp_path, per_class=(9, 4, 3))  # val: exactly min(K, 4), still drawn
    full = build(tmp_path, name)
    ds = build(tmp_path, name, shots=5, seed=3, sampling="lpclip")
    np.random.seed(3)  # lpclip seeds numpy's global generator with the run index
    train = lpclip_draws(rows(full.train_x, generated.dataset_dir), 5, np.random)
    val = lpclip_draws(rows(full.val, generated.dataset_dir), 4, np.random)  # ImageNet: its test set
    assert rows(ds.train_x, generated.dataset_dir) == train
    assert rows(ds.val, generated.dataset_dir) == val
    assert ds.test is not ds.val and len(ds.test) == len(full.test)
    assert not os.path.exists(os.path.join(generated.dataset_dir, "split_fewshot"))
    assert ds.summary()["fewshot_sampling"] == "lpclip"
    dassl = build(tmp_path, name, shots=5, seed=3)
    assert rows(dassl.train_x, generated.dataset_dir) != train  # another sample than Dassl's


def test_lpclip_sampling_needs_a_seed_and_sampling_a_known_name(tmp_path):
    layouts.make_dtd(tmp_path, per_class=(4, 2, 2))
    with pytest.raises(ValueError, match="lpclip seeds numpy with SEED, which is negative: pass --seed"):
        build(tmp_path, "DescribableTextures", shots=2, sampling="lpclip")
    with pytest.raises(ValueError, match="DATASET.FEWSHOT_SAMPLING must be one of"):
        build(tmp_path, "DescribableTextures", shots=2, seed=1, sampling="numpy")


def test_cache_referencing_a_missing_image_is_an_error(tmp_path):
    generated = layouts.make_dtd(tmp_path, per_class=(6, 3, 2))
    ds = build(tmp_path, "DescribableTextures", shots=2, seed=1)
    missing = ds.train_x[0].impath
    os.remove(missing)
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, "DescribableTextures", shots=2, seed=1)
    assert cache_path(generated, 2, 1) in str(err.value) and missing in str(err.value)


def test_few_shot_without_json_split(tmp_path):
    generated = layouts.make_fgvc_aircraft(tmp_path, per_class=(5, 5, 1))
    ds = build(tmp_path, "FGVCAircraft", shots=4, seed=2)
    assert len(ds.train_x) == 4 * 3 and len(ds.val) == 4 * 3
    assert os.path.isfile(cache_path(generated, 4, 2))


def test_imagenet_few_shot_cache_skips_listing_train(tmp_path):
    generated = layouts.make_imagenet(tmp_path, per_class=(5, 2))
    first = build(tmp_path, "ImageNet", shots=2, seed=1)
    assert len(first.train_x) == 2 * 3
    assert len(first.val) == len(first.test) == generated.counts["test"]
    assert set(json.loads(Path(cache_path(generated, 2, 1)).read_bytes())) == {"train"}
    # Listing train would now fail on a folder that classnames.txt does not know.
    os.makedirs(os.path.join(generated.dataset_dir, "images", "train", "n99999999"))
    again = build(tmp_path, "ImageNet", shots=2, seed=1)
    assert [d.impath for d in again.train_x] == [d.impath for d in first.train_x]
    with pytest.raises(ValueError, match="n99999999"):
        build(tmp_path, "ImageNet", shots=2, seed=2)


def test_test_only_variants_ignore_num_shots(tmp_path):
    generated = layouts.make_imagenet_sketch(tmp_path)
    ds = build(tmp_path, "ImageNetSketch", shots=1, seed=1)
    assert len(ds.test) == len(ds.train_x) == generated.counts["test"]
    assert not os.path.exists(os.path.join(generated.dataset_dir, "split_fewshot"))


# ---- base / new classes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "maker, num_classes, n_base",
    [
        (layouts.make_oxford_pets, 37, 19),
        (layouts.make_dtd, 47, 24),
        (layouts.make_food101, 101, 51),
        (layouts.make_sun397, 397, 199),
    ],
)
def test_subsample_counts(tmp_path, maker, num_classes, n_base):
    generated = maker(tmp_path, num_classes=num_classes, per_class=(1, 1, 1))
    names = generated.classnames
    base = build(tmp_path, generated.name, subsample="base")
    new = build(tmp_path, generated.name, subsample="new")
    assert base.num_classes == n_base and new.num_classes == num_classes - n_base
    assert base.classnames == names[:n_base] and new.classnames == names[n_base:]
    assert base.all_classnames == new.all_classnames == names
    assert (base.subsample, new.subsample) == ("base", "new")
    for ds, offset in ((base, 0), (new, n_base)):
        for split in (ds.train_x, ds.val, ds.test):
            assert {d.label for d in split} == set(range(ds.num_classes))
            assert all(d.classname == names[d.label + offset] for d in split)
    assert min(d.label for d in new.test) == 0


def test_subsample_imagenet_1000_classes(tmp_path):
    layouts.make_imagenet(tmp_path, num_classes=1000, per_class=(1, 1))
    new = build(tmp_path, "ImageNet", subsample="new")
    assert new.num_classes == 500 and len(new.test) == 500
    assert new.classnames[0] == "class name 500"


def test_subsample_applies_after_few_shot(tmp_path):
    layouts.make_oxford_pets(tmp_path, num_classes=5, per_class=(4, 4, 2))
    all_ds = build(tmp_path, "OxfordPets", shots=2, seed=1)
    new = build(tmp_path, "OxfordPets", shots=2, seed=1, subsample="new")
    # The same cached sample is shared by all/base/new runs.
    assert [d.impath for d in new.train_x] == [d.impath for d in all_ds.train_x if d.label >= 3]
    assert len(new.val) == 2 * 2


def test_unknown_subsample_mode_is_an_error(tmp_path):
    layouts.make_dtd(tmp_path)
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES.*'Base'"):
        build(tmp_path, "DescribableTextures", subsample="Base")


def test_variants_refuse_subsampling(tmp_path):
    layouts.make_imagenet_r(tmp_path)
    with pytest.raises(ValueError, match="ImageNetR.*SUBSAMPLE_CLASSES"):
        build(tmp_path, "ImageNetR", subsample="base")


# ---- errors name the path and what to do ---------------------------------------------------


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="DATASET.ROOT is not set"):
        build("", "OxfordPets")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=missing):
        build(missing, "OxfordPets")


def test_missing_dataset_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, "OxfordPets")
    assert str(tmp_path / "oxford_pets") in str(err.value)
    assert "images.tar.gz" in str(err.value)


def test_missing_image_folder_is_an_error(tmp_path):
    generated = layouts.make_eurosat(tmp_path)
    shutil.move(os.path.join(generated.dataset_dir, "2750"), tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=os.path.join(generated.dataset_dir, "2750")):
        build(tmp_path, "EuroSAT")


def test_missing_split_file_is_an_error_that_creates_nothing(tmp_path):
    generated = layouts.make_oxford_pets(tmp_path, with_split=False)
    split = os.path.join(generated.dataset_dir, "split_zhou_OxfordPets.json")
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, "OxfordPets")
    message = str(err.value)
    assert split in message and "CoOp DATASETS.md" in message
    assert "DATASET.CREATE_SPLIT True" in message
    assert not os.path.exists(split)


def test_missing_image_in_split_is_an_error(tmp_path):
    generated = layouts.make_sun397(tmp_path)
    image = build(tmp_path, "SUN397").test[-1].impath
    os.remove(image)
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, "SUN397")
    assert image in str(err.value)
    assert os.path.join(generated.dataset_dir, "split_zhou_SUN397.json") in str(err.value)


def test_missing_annotation_files_are_errors(tmp_path):
    fgvc = layouts.make_fgvc_aircraft(tmp_path)
    os.remove(os.path.join(fgvc.dataset_dir, "variants.txt"))
    with pytest.raises(FileNotFoundError, match=os.path.join(fgvc.dataset_dir, "variants.txt")):
        build(tmp_path, "FGVCAircraft")
    imagenet = layouts.make_imagenet(tmp_path)
    os.remove(os.path.join(imagenet.dataset_dir, "classnames.txt"))
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        build(tmp_path, "ImageNet")


def test_missing_imagenet_class_folder_is_an_error(tmp_path):
    generated = layouts.make_imagenet_sketch(tmp_path)
    shutil.rmtree(os.path.join(generated.dataset_dir, "images", "n00000001"))
    with pytest.raises(FileNotFoundError, match="n00000001"):
        build(tmp_path, "ImageNetSketch")


def test_text_files_that_are_not_utf8_name_the_file(tmp_path):
    pets = layouts.make_oxford_pets(tmp_path / "a")
    split = os.path.join(pets.dataset_dir, "split_zhou_OxfordPets.json")
    with open(split, "rb") as f:
        data = f.read()
    with open(split, "wb") as f:
        f.write(data.replace(b"dog_breed_00", "d\u00f6g_breed_00".encode("latin-1")))
    with pytest.raises(ValueError, match=f"Split file {split} is not UTF-8 text \\(byte 0xf6 at position"):
        build(tmp_path / "a", "OxfordPets")
    imagenet = layouts.make_imagenet(tmp_path / "b")
    names = os.path.join(imagenet.dataset_dir, "classnames.txt")
    with open(names, "ab") as f:
        f.write("n99999999 caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"Class-name file {names} is not UTF-8 text"):
        build(tmp_path / "b", "ImageNet")
    with open(split, "w") as f:
        f.write('{"train": [')
    with pytest.raises(ValueError, match=f"Split file {split} is not valid JSON"):
        build(tmp_path / "a", "OxfordPets")


def test_unreadable_images_are_found_when_the_dataset_is_built(tmp_path, monkeypatch, capsys):
    generated = layouts.make_oxford_pets(tmp_path, per_class=(4, 2, 2))
    ds = build(tmp_path, "OxfordPets")
    train_image, test_image, val_image = ds.train_x[0].impath, ds.test[-1].impath, ds.val[0].impath
    open(test_image, "wb").close()  # zero bytes, in the test split read after training
    with open(train_image, "wb") as f:
        f.write(b"<html>Not Found</html>")  # a download that went wrong
    with open(val_image, "r+b") as f:
        f.truncate(20)  # cut within the JPEG header
    with pytest.raises(ValueError) as err:
        build(tmp_path, "OxfordPets")
    message = str(err.value)
    assert message.startswith("3 of the 24 listed images cannot be opened")
    assert all(path in message for path in (train_image, test_image, val_image))
    assert generated.dataset_dir in message and "Replace them" in message
    from datasets import image_check

    monkeypatch.setattr(image_check, "PROGRESS_EVERY", 10)  # progress on "large" datasets
    with pytest.raises(ValueError):
        build(tmp_path, "OxfordPets")
    assert "Checked the headers of 20 / 24 images" in capsys.readouterr().out


def test_classes_with_fewer_images_than_num_shots_are_reported(tmp_path, capsys):
    generated = layouts.make_oxford_pets(tmp_path, per_class=(4, 2, 2))
    split_path = os.path.join(generated.dataset_dir, "split_zhou_OxfordPets.json")
    with open(split_path) as f:
        split = json.load(f)
    short = [row for row in split["train"] if row[1] == 1][:2]
    split["train"] = [row for row in split["train"] if row not in short]
    layouts.write_split(split_path, split)
    ds = build(tmp_path, "OxfordPets", shots=3, seed=1)
    assert (
        "Warning: DATASET.NUM_SHOTS is 3, but 1 of 3 classes have fewer training images and train on "
        "all they have: cat_breed_01 (2)"
    ) in capsys.readouterr().out
    assert ds.summary() == {
        "dataset": "OxfordPets",
        "subsample_classes": "all",
        "num_shots": 3,
        "fewshot_sampling": "dassl",
        "effective_shots": 2,
        "short_classes": {"cat_breed_01": 2},
        "train_images_per_class": {"dog_breed_00": 3, "cat_breed_01": 2, "dog_breed_02": 3},
    }
    assert build(tmp_path, "OxfordPets").summary()["effective_shots"] is None  # all images


def test_config_without_package_keys_is_an_error(tmp_path):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(tmp_path), "DescribableTextures"
    with pytest.raises(KeyError, match="datasets.add_config"):
        build_dataset(cfg)


# ---- creating a split only when asked ------------------------------------------------------


@pytest.mark.parametrize(
    "maker",
    [
        layouts.make_caltech101,
        layouts.make_dtd,
        layouts.make_food101,
        layouts.make_eurosat,
        layouts.make_oxford_pets,
    ],
)
def test_create_split_when_asked(tmp_path, capsys, maker):
    generated = maker(tmp_path, with_split=False)
    ds = build(tmp_path, generated.name, create_split=True)
    split_file = os.path.join(generated.dataset_dir, f"split_zhou_{generated.name}.json")
    assert f"Created a new random split {split_file}" in capsys.readouterr().out
    assert ds.all_classnames == generated.classnames  # ignored folders, readable names
    total = sum(generated.counts.values())
    assert len(ds.train_x) + len(ds.val) + len(ds.test) == total
    assert min(len(ds.train_x), len(ds.val), len(ds.test)) > 0
    created = Path(split_file).read_bytes()
    build(tmp_path, generated.name, create_split=True)  # never overwritten
    assert Path(split_file).read_bytes() == created
    assert "Created" not in capsys.readouterr().out


def test_create_split_never_overwrites_an_existing_split(tmp_path):
    generated = layouts.make_caltech101(tmp_path)
    split_file = os.path.join(generated.dataset_dir, "split_zhou_Caltech101.json")
    original = Path(split_file).read_bytes()
    ds = build(tmp_path, "Caltech101", create_split=True)
    assert Path(split_file).read_bytes() == original
    assert len(ds.train_x) == generated.counts["train"]


def test_create_split_unsupported_is_an_error(tmp_path):
    generated = layouts.make_ucf101(tmp_path)
    split_file = os.path.join(generated.dataset_dir, "split_zhou_UCF101.json")
    os.remove(split_file)
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, "UCF101", create_split=True)
    assert split_file in str(err.value) and "not supported" in str(err.value)


def test_created_split_gives_small_classes_one_image_per_split(tmp_path):
    generated = layouts.make_dtd(tmp_path, num_classes=2, per_class=(1, 1, 1), with_split=False)
    ds = build(tmp_path, generated.name, create_split=True)
    assert len(ds.train_x) == len(ds.val) == len(ds.test) == 2
    os.remove(ds.test[0].impath)
    os.remove(os.path.join(generated.dataset_dir, "split_zhou_DescribableTextures.json"))
    with pytest.raises(ValueError, match=os.path.dirname(ds.test[0].impath)):
        build(tmp_path, generated.name, create_split=True)
