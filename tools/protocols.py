"""The evaluation protocols: their datasets, the trainer config a run of one dataset uses, and
the run grid (every train.py invocation of a protocol, with the run each evaluation waits for).

One definition for the tools, the tests, the sweep (tools/sweep) and, through the command line
below, the protocol scripts (scripts/_common.sh). Dassl-free and torch-free: the scripts call it
before any training.

    python -m tools.protocols trainer-config <Trainer> <config> <dataset> [<dataset> ...]
    python -m tools.protocols plan <protocol> <Trainer> <config> --data DIR --output DIR \
        --seeds S [S ...] --shots K [K ...] --datasets D [D ...]

`trainer-config` prints, one line per dataset, the trainer config file the protocol scripts
pass to train.py (see `trainer_config`), or names both paths it looked for and exits with
status 1. `plan` prints one line per run in the order the scripts run them: the run directory,
the directory of the training run it evaluates (empty when none) and train.py's arguments, as
shell words (`shlex.join`); a missing dataset or trainer config is an error (status 1) before
anything is printed. For `xd`, `--datasets` are the targets.
"""

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from typing import NamedTuple

from tools.results.runlog import RunKey


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


PROTOCOL_NAMES = ("base2new", "fewshot", "xd")


def dataset_config(dataset, root="."):
    """configs/datasets/<dataset>.yaml, or FileNotFoundError naming it."""
    path = f"configs/datasets/{dataset}.yaml"
    if not os.path.isfile(os.path.join(root, path)):
        raise FileNotFoundError(f"unknown dataset '{dataset}': {path} does not exist")
    return path


@dataclass(frozen=True)
class Run:
    """One train.py invocation of a protocol: it writes into `<output>/<path>`."""

    key: RunKey
    seed: int
    args: tuple  # train.py's arguments
    after: str | None = None  # path of the training run this evaluation loads; it runs after it

    @property
    def path(self):
        """The run directory relative to the output root (tools.results.runlog's layout)."""
        return self.key.path(self.seed)

    @property
    def trains(self):
        return "--eval-only" not in self.args


class Grid(NamedTuple):
    """What every run of one trainer config shares: train.py's --root and the output root."""

    trainer: str
    config: str
    data: str
    output: str
    root: str = "."  # the repository, where configs/ is

    def run(self, key, seed, cfg_file, opts, model=None):
        """The run of `key` and `seed`; `model` is the path of the training run it evaluates."""
        args = [
            "--root", self.data, "--seed", str(seed), "--trainer", self.trainer,
            "--dataset-config-file", f"configs/datasets/{key.dataset}.yaml", "--config-file", cfg_file,
            "--output-dir", f"{self.output}/{key.path(seed)}",
        ]  # fmt: skip
        if model is not None:
            args += ["--model-dir", f"{self.output}/{model}", "--eval-only"]
        return Run(key, seed, tuple(args + list(opts)), model)

    def key(self, protocol, part, dataset, shots):
        return RunKey(protocol, part, dataset, shots, self.trainer, self.config)


def _shots_opts(shots, classes):
    return ("DATASET.NUM_SHOTS", str(shots), "DATASET.SUBSAMPLE_CLASSES", classes)


def base2new_runs(grid, datasets, seeds, shots):
    """For each dataset, shot count and seed: train on the base classes, then evaluate the
    finished model on the new ones."""
    runs = []
    for dataset in datasets:
        cfg_file = trainer_config(grid.trainer, grid.config, dataset, grid.root)
        for k in shots:
            for seed in seeds:
                train = grid.run(
                    grid.key("base2new", "train_base", dataset, k), seed, cfg_file, _shots_opts(k, "base")
                )
                new = grid.key("base2new", "test_new", dataset, k)
                runs += [train, grid.run(new, seed, cfg_file, _shots_opts(k, "new"), model=train.path)]
    return runs


def fewshot_runs(grid, datasets, seeds, shots):
    """For each dataset, shot count and seed: train on all classes (its own test is the result)."""
    runs = []
    for dataset in datasets:
        cfg_file = trainer_config(grid.trainer, grid.config, dataset, grid.root)
        for k in shots:
            runs += [
                grid.run(grid.key("fewshot", "", dataset, k), seed, cfg_file, _shots_opts(k, "all"))
                for seed in seeds
            ]
    return runs


def xd_runs(grid, targets, seeds, shots):
    """For each shot count and seed: train once on the source (all classes), then evaluate that
    model on every target with the source's trainer config, so that it is built as trained."""
    cfg_file = trainer_config(grid.trainer, grid.config, XD_SOURCE, grid.root)
    # A trained model is shaped by its training data's prompts (MoCoOp's experts, MoPD's teacher
    # pool), not by the target's.
    source_prompts = ("DATASET.SOURCE_CONFIG", dataset_config(XD_SOURCE))
    runs = []
    for k in shots:
        for seed in seeds:
            train = grid.run(grid.key("xd", "train", XD_SOURCE, k), seed, cfg_file, _shots_opts(k, "all"))
            runs.append(train)
            for target in targets:
                runs.append(
                    grid.run(
                        grid.key("xd", "test", target, k), seed, cfg_file, source_prompts, model=train.path
                    )
                )
    return runs


def plan(protocol, grid, datasets, seeds, shots):
    """The runs of `protocol` for one trainer config, in the order the scripts run them; for
    `xd`, `datasets` are the targets. Every dataset config is checked before any trainer config,
    and both before the first run is made (FileNotFoundError naming the missing file)."""
    if protocol not in PROTOCOL_NAMES:
        raise ValueError(f"unknown protocol '{protocol}' (expected one of {', '.join(PROTOCOL_NAMES)})")
    for dataset in ([XD_SOURCE] if protocol == "xd" else []) + list(datasets):
        dataset_config(dataset, grid.root)
    if protocol == "base2new":
        return base2new_runs(grid, datasets, seeds, shots)
    if protocol == "fewshot":
        return fewshot_runs(grid, datasets, seeds, shots)
    return xd_runs(grid, datasets, seeds, shots)


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.protocols", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lookup = commands.add_parser("trainer-config", help="the trainer config file of each dataset's runs")
    lookup.add_argument("trainer", help="a trainer, e.g. MoCoOp")
    lookup.add_argument("config", help="its config name, e.g. paper_vit_b16_ep25")
    lookup.add_argument("datasets", nargs="+", metavar="dataset", help="dataset names, e.g. imagenet dtd")
    runs = commands.add_parser("plan", help="the runs of a protocol, one line of shell words each")
    runs.add_argument("protocol", choices=PROTOCOL_NAMES, help="the protocol")
    runs.add_argument("trainer", help="a trainer, e.g. MoCoOp")
    runs.add_argument("config", help="its config name, e.g. paper_vit_b16_ep25")
    runs.add_argument("--data", required=True, help="train.py's --root")
    runs.add_argument("--output", required=True, help="the output root")
    runs.add_argument("--seeds", nargs="+", type=_non_negative, required=True, help="seeds, e.g. 1 2 3")
    runs.add_argument("--shots", nargs="+", type=_positive, required=True, help="shots per class, e.g. 16")
    runs.add_argument("--datasets", nargs="*", default=[], help="the datasets (xd: the targets)")
    args = parser.parse_args(argv)
    try:
        if args.command == "trainer-config":
            lines = [trainer_config(args.trainer, args.config, d) for d in args.datasets]
        else:
            grid = Grid(args.trainer, args.config, args.data, args.output)
            lines = [
                shlex.join(
                    [f"{args.output}/{r.path}", f"{args.output}/{r.after}" if r.after else "", *r.args]
                )
                for r in plan(args.protocol, grid, args.datasets, args.seeds, args.shots)
            ]
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if lines:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
