"""The runs that per-run figures and reports are made for: groups of seeds of one trainer/config.

In an output tree (the protocol scripts' layout) a group is a `RunKey` with its seeds. Any other
folder (one run, a folder of seeds, a folder of one's own runs) is searched for run folders, those
holding a `log.txt` or a `config.yaml` as train.py writes them; sibling folders named `seed<N>`
form one group, any other run folder is a group of its own.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools.results.cells import display_name

_SEED = re.compile(r"seed(\d+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
RUN_FILES = ("log.txt", "config.yaml")


def file_stem(*parts):
    """A file name from parts: empty parts dropped, characters other than letters, digits, '.',
    '_' and '-' replaced."""
    return "_".join(_UNSAFE.sub("-", str(p)).strip("-") for p in parts if p != "" and p is not None)


@dataclass
class RunGroup:
    title: str  # what the runs are, for figure titles
    stem: str  # their part of file names
    runs: dict  # {label ("seed 1", or the folder's name): run folder}


def tree_groups(runs):
    """One RunGroup per RunKey of `discover`'s runs, in key order."""
    found = []
    for key, seeds in sorted(runs.items()):
        part = f" {key.part}" if key.part else ""
        title = f"{key.trainer} / {key.config} on {display_name(key.dataset)}: {key.protocol}{part}, {key.shots} shots"
        stem = file_stem(key.protocol, key.part, key.dataset, f"shots{key.shots}", key.trainer, key.config)
        found.append(RunGroup(title, stem, {f"seed {s}": seeds[s].path for s in sorted(seeds)}))
    return found


def is_run_folder(path):
    return any((Path(path) / name).is_file() for name in RUN_FILES)


def run_folders(root):
    """Every run folder at or below `root` (hidden folders left out), sorted."""
    root = Path(root)
    found = []
    for parent, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if is_run_folder(parent):
            found.append(Path(parent))
    return sorted(found)


def run_identity(run):
    """(trainer, dataset, classes) from a run's config.yaml ("" where it has none)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return "", "", ""
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SystemExit(
            f"error: {path} is not a config train.py wrote ({err}): restore or delete it"
        ) from None
    dataset = cfg.get("DATASET", {})
    classes = dataset.get("SUBSAMPLE_CLASSES", "all")
    return (
        cfg.get("TRAINER", {}).get("NAME", ""),
        dataset.get("NAME", ""),
        "" if classes == "all" else classes,
    )


def folder_groups(root):
    """RunGroups of the run folders at or below `root` (module docstring)."""
    root = Path(root)
    by_folder = {}
    for run in run_folders(root):
        seed = _SEED.fullmatch(run.name)
        folder = run.parent if seed and run != root else run
        by_folder.setdefault(folder, {})[f"seed {seed[1]}" if seed else run.name] = run
    groups = []
    for folder, runs in sorted(by_folder.items()):
        runs = dict(sorted(runs.items(), key=lambda item: _seed_order(item[0])))
        trainer, dataset, classes = run_identity(next(iter(runs.values())))
        where = folder.relative_to(root).parts if folder != root else (folder.resolve().name,)
        what = " ".join(
            x for x in (trainer, "on" if dataset else "", dataset, classes and f"({classes} classes)") if x
        )
        groups.append(
            RunGroup(
                f"{what}: {folder}" if what else str(folder),
                file_stem(trainer, dataset, classes, *where),
                runs,
            )
        )
    return groups


def _seed_order(label):
    m = re.fullmatch(r"seed (\d+)", label)
    return (0, int(m[1]), "") if m else (1, 0, label)
