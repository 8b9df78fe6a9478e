"""Generate every dataset in its real on-disk layout (docs/DATASETS.md) with tiny images.

Each `make_<dataset>(root, num_classes, per_class)` writes under `root` and returns a
`Generated` record of what a reader should find. `per_class` is the number of images per
class in (train, val, test).
"""

import functools
import io
import json
import os
import posixpath
from dataclasses import dataclass

from PIL import Image


@dataclass
class Generated:
    name: str  # registered dataset name
    dataset_dir: str
    classnames: list  # in label order
    counts: dict  # split -> number of images

    @property
    def num_classes(self):
        return len(self.classnames)


@functools.cache
def _jpeg_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def write_image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(_jpeg_bytes())


def write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{line}\n" for line in lines)


def write_split(path, split):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(split, f)


def _counts(split):
    return {name: len(rows) for name, rows in split.items()}


def _folder_per_class(image_dir, folders, names, per_class, image_name):
    """Images <folder>/<image_name(folder, k)>; returns the split rows CoOp would list."""
    split = {"train": [], "val": [], "test": []}
    k = 0
    for label, (folder, name) in enumerate(zip(folders, names)):
        for split_name, n in zip(split, per_class):
            for _ in range(n):
                k += 1
                rel = posixpath.join(folder, image_name(folder, k))
                write_image(os.path.join(image_dir, rel))
                split[split_name].append([rel, label, name])
    return split


def _split_json_dataset(
    root, name, folder, image_folder, split_file, folders, names, per_class, image_name, with_split
):
    dataset_dir = os.path.join(root, folder)
    split = _folder_per_class(os.path.join(dataset_dir, image_folder), folders, names, per_class, image_name)
    if with_split:
        write_split(os.path.join(dataset_dir, split_file), split)
    return Generated(name, dataset_dir, list(names), _counts(split))


def make_caltech101(root, num_classes=3, per_class=(4, 2, 2), with_split=True):
    # Real folder names that the reader renames, then generic ones.
    folders = ["Faces", "Leopards", "airplanes"] + [f"class_{i:03d}" for i in range(num_classes)]
    folders = folders[:num_classes]
    renames = {"Faces": "face", "Leopards": "leopard", "airplanes": "airplane"}
    names = [renames.get(f, f) for f in folders]
    image_dir = os.path.join(root, "caltech-101", "101_ObjectCategories")
    for ignored in ("BACKGROUND_Google", "Faces_easy"):
        for k in range(3):
            write_image(os.path.join(image_dir, ignored, f"image_{k:04d}.jpg"))
    return _split_json_dataset(
        root,
        "Caltech101",
        "caltech-101",
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        folders,
        names,
        per_class,
        lambda f, k: f"image_{k:04d}.jpg",
        with_split,
    )


def make_dtd(root, num_classes=3, per_class=(4, 2, 2), with_split=True):
    folders = [f"texture{i:02d}" for i in range(num_classes)]
    os.makedirs(os.path.join(root, "dtd", "imdb"), exist_ok=True)
    os.makedirs(os.path.join(root, "dtd", "labels"), exist_ok=True)
    return _split_json_dataset(
        root,
        "DescribableTextures",
        "dtd",
        "images",
        "split_zhou_DescribableTextures.json",
        folders,
        folders,
        per_class,
        lambda f, k: f"{f}_{k:04d}.jpg",
        with_split,
    )


def make_food101(root, num_classes=3, per_class=(4, 2, 2), with_split=True):
    folders = [f"dish_{i:03d}" for i in range(num_classes)]
    return _split_json_dataset(
        root,
        "Food101",
        "food-101",
        "images",
        "split_zhou_Food101.json",
        folders,
        folders,
        per_class,
        lambda f, k: f"{k}.jpg",
        with_split,
    )


EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


def make_eurosat(root, num_classes=10, per_class=(4, 2, 2), with_split=True):
    folders = sorted(EUROSAT_NAMES)[:num_classes]
    return _split_json_dataset(
        root,
        "EuroSAT",
        "eurosat",
        "2750",
        "split_zhou_EuroSAT.json",
        folders,
        [EUROSAT_NAMES[f] for f in folders],
        per_class,
        lambda f, k: f"{f}_{k}.jpg",
        with_split,
    )


def make_sun397(root, num_classes=3, per_class=(4, 2, 2)):
    # SUN397/<letter>/<scene>/ (some scenes have an indoor/outdoor sub-folder).
    folders = [f"s/scene_{i:03d}" + ("/indoor" if i % 2 else "") for i in range(num_classes)]
    names = [f"indoor scene_{i:03d}" if i % 2 else f"scene_{i:03d}" for i in range(num_classes)]
    write_text(os.path.join(root, "sun397", "ClassName.txt"), [f"/{f}" for f in folders])
    return _split_json_dataset(
        root,
        "SUN397",
        "sun397",
        "SUN397",
        "split_zhou_SUN397.json",
        folders,
        names,
        per_class,
        lambda f, k: f"sun_{k:06d}.jpg",
        True,
    )


def make_ucf101(root, num_classes=3, per_class=(4, 2, 2)):
    folders = [f"Play_Instrument_{i:03d}" for i in range(num_classes)]
    return _split_json_dataset(
        root,
        "UCF101",
        "ucf101",
        "UCF-101-midframes",
        "split_zhou_UCF101.json",
        folders,
        folders,
        per_class,
        lambda f, k: f"v_{f.replace('_', '')}_g{k:02d}_c01.jpg",
        True,
    )


def make_oxford_pets(root, num_classes=3, per_class=(4, 2, 2), with_split=True):
    """Flat images/<Breed_name>_<k>.jpg; cat breeds are capitalised, class names are not."""
    dataset_dir = os.path.join(root, "oxford_pets")
    breeds = [f"{'Cat' if i % 2 else 'dog'}_breed_{i:02d}" for i in range(num_classes)]
    split = {"train": [], "val": [], "test": []}
    annotations = {"trainval": [], "test": []}
    k = 0
    for label, breed in enumerate(breeds):
        for split_name, n in zip(split, per_class):
            for _ in range(n):
                k += 1
                image_id = f"{breed}_{k}"
                write_image(os.path.join(dataset_dir, "images", f"{image_id}.jpg"))
                split[split_name].append([f"{image_id}.jpg", label, breed.lower()])
                species = 1 if breed[0].isupper() else 2
                annotations["test" if split_name == "test" else "trainval"].append(
                    f"{image_id} {label + 1} {species} {label + 1}"
                )
    header = ["#Image CLASS-ID SPECIES BREED ID"]
    for name, lines in annotations.items():
        write_text(os.path.join(dataset_dir, "annotations", f"{name}.txt"), header + lines)
    if with_split:
        write_split(os.path.join(dataset_dir, "split_zhou_OxfordPets.json"), split)
    return Generated("OxfordPets", dataset_dir, [b.lower() for b in breeds], _counts(split))


def make_stanford_cars(root, num_classes=3, per_class=(4, 2, 2)):
    """cars_train/ and cars_test/ with numbered images; split paths start with those folders."""
    dataset_dir = os.path.join(root, "stanford_cars")
    names = [f"2012 Make Model {i}" for i in range(num_classes)]
    split = {"train": [], "val": [], "test": []}
    numbers = {"cars_train": 0, "cars_test": 0}
    for label, name in enumerate(names):
        for split_name, n in zip(split, per_class):
            folder = "cars_test" if split_name == "test" else "cars_train"
            for _ in range(n):
                numbers[folder] += 1
                rel = f"{folder}/{numbers[folder]:05d}.jpg"
                write_image(os.path.join(dataset_dir, rel))
                split[split_name].append([rel, label, name])
    os.makedirs(os.path.join(dataset_dir, "devkit"), exist_ok=True)
    write_split(os.path.join(dataset_dir, "split_zhou_StanfordCars.json"), split)
    return Generated("StanfordCars", dataset_dir, names, _counts(split))


def make_oxford_flowers(root, num_classes=3, per_class=(4, 2, 2)):
    """Flat jpg/image_<5 digits>.jpg, cat_to_name.json keyed by 1-based label."""
    names = [f"flower {i}" for i in range(num_classes)]
    generated = _split_json_dataset(
        root,
        "OxfordFlowers",
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        [""] * num_classes,
        names,
        per_class,
        lambda f, k: f"image_{k:05d}.jpg",
        True,
    )
    with open(os.path.join(generated.dataset_dir, "cat_to_name.json"), "w") as f:
        json.dump({str(i + 1): n for i, n in enumerate(names)}, f)
    return generated


def make_fgvc_aircraft(root, num_classes=3, per_class=(4, 2, 2)):
    """variants.txt plus images_variant_{train,val,test}.txt rows "<id> <variant>"."""
    dataset_dir = os.path.join(root, "fgvc_aircraft")
    # Real variant names contain spaces and slashes (e.g. "F-16A/B", "Boeing 737-200").
    variants = [f"Model {i}-{i}00" if i % 2 else f"F-{i}A/B" for i in range(num_classes)]
    write_text(os.path.join(dataset_dir, "variants.txt"), variants)
    counts, k = {}, 0
    for split_name, n in zip(("train", "val", "test"), per_class):
        lines = []
        for variant in variants:
            for _ in range(n):
                k += 1
                write_image(os.path.join(dataset_dir, "images", f"{k:07d}.jpg"))
                lines.append(f"{k:07d} {variant}")
        write_text(os.path.join(dataset_dir, f"images_variant_{split_name}.txt"), lines)
        counts[split_name] = len(lines)
    return Generated("FGVCAircraft", dataset_dir, variants, counts)


def imagenet_classes(num_classes):
    return [f"n{i:08d}" for i in range(num_classes)], [f"class name {i}" for i in range(num_classes)]


def write_classnames(dataset_dir, num_classes):
    wnids, names = imagenet_classes(num_classes)
    write_text(os.path.join(dataset_dir, "classnames.txt"), [f"{w} {n}" for w, n in zip(wnids, names)])
    return wnids, names


def make_imagenet(root, num_classes=3, per_class=(4, 2)):
    """images/train/<wnid>/ and images/val/<wnid>/ (val is the test set); per_class = (train, val)."""
    dataset_dir = os.path.join(root, "imagenet")
    wnids, names = write_classnames(dataset_dir, num_classes)
    for split_dir, n in zip(("train", "val"), per_class):
        for wnid in wnids:
            for k in range(n):
                write_image(os.path.join(dataset_dir, "images", split_dir, wnid, f"{wnid}_{k}.JPEG"))
    counts = {"train": per_class[0] * num_classes, "test": per_class[1] * num_classes}
    return Generated("ImageNet", dataset_dir, names, counts)


def _variant(root, name, folder, image_folder, num_classes, per_class, class_folder, keep):
    dataset_dir = os.path.join(root, folder)
    wnids, names = write_classnames(dataset_dir, num_classes)
    kept = [label for label in range(num_classes) if keep(label)]
    for label in kept:
        for k in range(per_class):
            write_image(
                os.path.join(dataset_dir, image_folder, class_folder(label, wnids[label]), f"image_{k}.jpg")
            )
    return Generated(name, dataset_dir, [names[y] for y in kept], {"test": per_class * len(kept)})


def make_imagenetv2(root, num_classes=3, per_class=2):
    return _variant(
        root,
        "ImageNetV2",
        "imagenetv2",
        "imagenetv2-matched-frequency-format-val",
        num_classes,
        per_class,
        lambda y, w: str(y),
        lambda y: True,
    )


def make_imagenet_sketch(root, num_classes=3, per_class=2):
    return _variant(
        root,
        "ImageNetSketch",
        "imagenet-sketch",
        "images",
        num_classes,
        per_class,
        lambda y, w: w,
        lambda y: True,
    )


def _two_hundred_class_variant(root, name, folder, image_folder, num_classes, per_class):
    """Only every other ImageNet class has a folder (200 of 1000 in the real data)."""
    generated = _variant(
        root, name, folder, image_folder, num_classes, per_class, lambda y, w: w, lambda y: y % 2 == 1
    )
    write_text(os.path.join(generated.dataset_dir, image_folder, "README.txt"), ["not a class"])
    return generated


def make_imagenet_a(root, num_classes=6, per_class=2):
    return _two_hundred_class_variant(
        root, "ImageNetA", "imagenet-adversarial", "imagenet-a", num_classes, per_class
    )


def make_imagenet_r(root, num_classes=6, per_class=2):
    return _two_hundred_class_variant(
        root, "ImageNetR", "imagenet-rendition", "imagenet-r", num_classes, per_class
    )


MAKERS = {
    "Caltech101": make_caltech101,
    "OxfordPets": make_oxford_pets,
    "StanfordCars": make_stanford_cars,
    "OxfordFlowers": make_oxford_flowers,
    "Food101": make_food101,
    "FGVCAircraft": make_fgvc_aircraft,
    "SUN397": make_sun397,
    "DescribableTextures": make_dtd,
    "EuroSAT": make_eurosat,
    "UCF101": make_ucf101,
    "ImageNet": make_imagenet,
    "ImageNetV2": make_imagenetv2,
    "ImageNetSketch": make_imagenet_sketch,
    "ImageNetA": make_imagenet_a,
    "ImageNetR": make_imagenet_r,
}
