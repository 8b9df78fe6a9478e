"""Reading YAML config files with `_BASE_` inheritance (used by train.py and the trainers)."""

import os

import yaml


def read_config_file(path, seen=()):
    """Key tree (nested dicts) of a YAML config with its `_BASE_` chain merged in, base first.

    `_BASE_: other.yaml` is resolved relative to the including file; a list of files is
    merged in order, later files overriding earlier ones, and the including file last.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path} not found")
    if os.path.abspath(path) in seen:
        raise ValueError(f"Config file {path} includes itself through _BASE_")
    with open(path) as f:
        tree = yaml.safe_load(f) or {}
    bases = tree.pop("_BASE_", [])
    merged = {}
    for base in [bases] if isinstance(bases, str) else bases:
        parent = read_config_file(os.path.join(os.path.dirname(path), base), (*seen, os.path.abspath(path)))
        deep_update(merged, parent)
    return deep_update(merged, tree)


def deep_update(base, override):
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base
