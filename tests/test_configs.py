"""The configs against what the documentation says about them: docs/MOCOOP.md's presets and
ablation tables key by key, and CoOp's base-to-new recipe with its ImageNet file."""

import os
import re

import pytest
import yaml

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from yacs.config import CfgNode as CN

from trainers import make_cfg
from trainers.runs.folder import flat_config

PETS = "configs/datasets/oxford_pets.yaml"
MOCOOP = "configs/trainers/MoCoOp"
COOP = "configs/trainers/CoOp"
PAPER = "paper_vit_b16_ep25"


def resolved(trainer, config_file):
    return flat_config(make_cfg(trainer, PETS, config_file))


def mocoop(stem):
    return resolved("MoCoOp", os.path.join(MOCOOP, f"{stem}.yaml"))


def full_key(key):
    """docs/MOCOOP.md writes TRAINER.MOCOOP's keys without their prefix."""
    return key if "." in key else f"TRAINER.MOCOOP.{key}"


def decode(text):
    """A value as written in docs/MOCOOP.md, decoded as a KEY VALUE command-line option is."""
    return CN._decode_cfg_value(text)


def code_spans(cell):
    return re.findall(r"`([^`]*)`", cell)


def mocoop_doc_tables():
    """The Markdown tables of docs/MOCOOP.md, each a list of rows of cells."""
    with open("docs/MOCOOP.md", encoding="utf-8") as f:
        text = f.read()
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append([rows[0]] + rows[2:])  # without the |---| line
            rows = []
    return tables


def table_with_header(cell):
    matches = [t for t in mocoop_doc_tables() if cell in t[0]]
    assert len(matches) == 1, f"docs/MOCOOP.md needs one table with a {cell!r} column"
    return matches[0]


def preset_columns(header):
    """{column index: (ep25 config, ep50 config)} from header cells `<name>_ep25` / `_ep50`."""
    columns = {}
    for i, cell in enumerate(header):
        spans = code_spans(cell)
        if spans:
            ep25, suffix = spans
            columns[i] = (ep25, ep25[: -len("_ep25")] + suffix)
    return columns


def test_doc_presets_table_matches_the_configs_key_by_key():
    table = table_with_header("key")
    header, rows = table[0], table[1:]
    key_column = header.index("key")
    columns = preset_columns(header)
    assert sorted(columns.values()) == [
        ("paper_vit_b16_ep25", "paper_vit_b16_ep50"),
        ("release_vit_b16_ep25", "release_vit_b16_ep50"),
    ]
    configs = {stem: mocoop(stem) for pair in columns.values() for stem in pair}
    documented = set()
    for row in rows:
        keys = code_spans(row[key_column])
        if not keys:
            continue
        key = full_key(*keys)
        documented.add(key)
        for column, stems in columns.items():
            values = [decode(v) for v in code_spans(row[column])]
            assert len(values) in (1, 2), f"{key}: one value, or one per schedule (ep25 / ep50)"
            expected = values if len(values) == 2 else values * 2
            got = [configs[stem][key] for stem in stems]
            assert got == expected, f"docs/MOCOOP.md says {key} = {expected} for {stems}, the configs {got}"
    # Every key a preset file sets, and every TRAINER.MOCOOP key, has a row.
    for stem in configs:
        with open(os.path.join(MOCOOP, f"{stem}.yaml")) as f:
            own = yaml.safe_load(f)
        own.pop("_BASE_")
        missing = set(flat_config(own)) - documented
        assert not missing, f"{stem}.yaml sets {sorted(missing)}, which docs/MOCOOP.md's presets table lacks"
    declared = {k for k in configs[PAPER] if k.startswith("TRAINER.MOCOOP.")}
    assert declared <= documented, f"docs/MOCOOP.md's presets table lacks {sorted(declared - documented)}"


def test_doc_ablation_table_lists_exactly_what_each_ablation_changes():
    table = table_with_header(f"keys changed from `{PAPER}`")
    paper = mocoop(PAPER)
    listed = set()
    for row in table[1:]:
        (stem,) = code_spans(row[0])
        listed.add(stem)
        expected = {}
        for override in code_spans(row[-1]):
            key, value = override.split(" ", 1)
            expected[full_key(key)] = decode(value)
        ablation = mocoop(stem)
        changed = {k: v for k, v in ablation.items() if v != paper[k]}
        assert changed == expected, f"{stem}: docs/MOCOOP.md lists {expected}, the config changes {changed}"
    on_disk = {
        f[: -len(".yaml")] for f in os.listdir(MOCOOP) if f.startswith(f"{PAPER}_") and f.endswith(".yaml")
    }
    assert listed == on_disk, "docs/MOCOOP.md's ablation table and the paper-preset ablation configs differ"


def test_paper_preset_router_reference_has_no_temperature():
    """Eq. 6 as printed: W_hard = softmax(cos), tau_r 1; 0.07 is the named ablation only."""
    assert mocoop(PAPER)["TRAINER.MOCOOP.ROUTER_TEMPERATURE"] == 1.0
    assert mocoop("paper_vit_b16_ep50")["TRAINER.MOCOOP.ROUTER_TEMPERATURE"] == 1.0
    assert mocoop(f"{PAPER}_router_tau007")["TRAINER.MOCOOP.ROUTER_TEMPERATURE"] == 0.07
    demo = resolved("MoCoOp", f"{MOCOOP}/demo.yaml")
    demo_tau007 = resolved("MoCoOp", f"{MOCOOP}/demo_router_tau007.yaml")
    assert {k: v for k, v in demo_tau007.items() if v != demo[k]} == {
        "TRAINER.MOCOOP.ROUTER_TEMPERATURE": 0.07
    }


def test_coop_base_to_new_recipe():
    """CoOp's released vit_b16_ctxv1 (200 epochs) and, picked by the scripts on ImageNet, its
    50-epoch file, which is CoOp's vit_b16_ep50_ctxv1."""
    recipe = resolved("CoOp", f"{COOP}/vit_b16_ctxv1.yaml")
    expected = {
        "TRAINER.COOP.N_CTX": 4,
        "TRAINER.COOP.CTX_INIT": "a photo of a",
        "TRAINER.COOP.CSC": False,
        "TRAINER.COOP.CLASS_TOKEN_POSITION": "end",
        "OPTIM.NAME": "sgd",
        "OPTIM.LR": 0.002,
        "OPTIM.MAX_EPOCH": 200,
        "DATALOADER.TRAIN_X.BATCH_SIZE": 32,
        "OPTIM.LR_SCHEDULER": "cosine",
        "OPTIM.WARMUP_EPOCH": 1,
        "OPTIM.WARMUP_TYPE": "constant",
        "OPTIM.WARMUP_CONS_LR": 1e-5,
        "MODEL.BACKBONE.NAME": "ViT-B/16",
    }
    assert {k: recipe[k] for k in expected} == expected
    imagenet = resolved("CoOp", f"{COOP}/vit_b16_ctxv1/imagenet.yaml")
    assert imagenet == resolved("CoOp", f"{COOP}/vit_b16_ep50_ctxv1.yaml")
    assert {k: v for k, v in imagenet.items() if v != recipe[k]} == {"OPTIM.MAX_EPOCH": 50}
