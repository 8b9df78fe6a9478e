"""The evaluation protocols' datasets and the trainer config a run of one dataset uses.

One definition for the tools, the tests and (through the command line below)
scripts/_common.sh. Dassl-free and torch-free: the scripts call it before any training.

    python -m tools.protocols trainer-config <Trainer> <config> <dataset> [<dataset> ...]

prints, one line per dataset, the trainer config file the protocol scripts pass to train.py
(see `trainer_config`), or names both paths it looked for and exits with status 1.
"""

import argparse
import os
import sys
from typing import NamedTuple


class Dataset(NamedTuple):
    config: str  # configs/datasets/<config>.yaml, and the dataset's folder in an output tree
    display: str  # the name tables print
    registered: str  # DATASET.NAME: the Dassl registry name of the dataset class


# The 11 datasets of the base-to-new and few-shot tables in CoOp's order, then the four ImageNet
# variants of the domain-generalisation table.
DATASETS = (
    Dataset("imagenet", "ImageNet", "ImageNet"),
    Dataset("caltech101", "Caltech101", "Caltech101"),
    Dataset("oxford_pets", "OxfordPets", "OxfordPets"),
    Dataset("stanford_cars", "StanfordCars", "StanfordCars"),
    Dataset("oxford_flowers", "OxfordFlowers", "OxfordFlowers"),
    Dataset("food101", "Food101", "Food101"),
    Dataset("fgvc_aircraft", "FGVCAircraft", "FGVCAircraft"),
    Dataset("sun397", "SUN397", "SUN397"),
    Dataset("dtd", "DTD", "DescribableTextures"),
    Dataset("eurosat", "EuroSAT", "EuroSAT"),
    Dataset("ucf101", "UCF101", "UCF101"),
    Dataset("imagenetv2", "ImageNetV2", "ImageNetV2"),
    Dataset("imagenet_sketch", "ImageNet-Sketch", "ImageNetSketch"),
    Dataset("imagenet_a", "ImageNet-A", "ImageNetA"),
    Dataset("imagenet_r", "ImageNet-R", "ImageNetR"),
)
ALL = [d.config for d in DATASETS]
DISPLAY = {d.config: d.display for d in DATASETS}
REGISTERED = {d.config: d.registered for d in DATASETS}
BENCHMARK = ALL[:11]
# Cross-dataset transfer trains on ImageNet and evaluates on the other ten; domain
# generalisation evaluates the same models on the ImageNet variants.
XD_SOURCE = "imagenet"
XD_TARGETS = [d for d in BENCHMARK if d != XD_SOURCE]
DG_TARGETS = ALL[11:]


def trainer_config(trainer, config, dataset, root="."):
    """The trainer config of a run of `dataset`: configs/trainers/<trainer>/<config>/<dataset>.yaml
    when it exists (per-dataset settings), else configs/trainers/<trainer>/<config>.yaml; the
    path relative to the repository `root`. FileNotFoundError naming both when neither exists."""
    per_dataset = f"configs/trainers/{trainer}/{config}/{dataset}.yaml"
    shared = f"configs/trainers/{trainer}/{config}.yaml"
    for path in (per_dataset, shared):
        if os.path.isfile(os.path.join(root, path)):
            return path
    raise FileNotFoundError(
        f"no trainer config for {trainer}/{config}: neither {per_dataset} nor {shared} exists"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.protocols", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lookup = commands.add_parser("trainer-config", help="the trainer config file of each dataset's runs")
    lookup.add_argument("trainer")
    lookup.add_argument("config")
    lookup.add_argument("datasets", nargs="+", metavar="dataset")
    args = parser.parse_args(argv)
    try:
        paths = [trainer_config(args.trainer, args.config, d) for d in args.datasets]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
