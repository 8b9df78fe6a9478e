"""Hand-crafted prompt data: the shared pools and the per-dataset `DATASET.PROMPTS` of the configs.

Reads the YAML files directly (no Dassl, no config loader), so a typo in a template is caught
before any training run encodes it.
"""

import os

import pytest
import yaml

from clipprompt import hard_prompts
from clipprompt.templates import PromptForm
from tests.conftest import ROOT
from tools.protocols import ALL, BENCHMARK, DG_TARGETS, REGISTERED

CONFIG_DIR = os.path.join(ROOT, "configs", "datasets")

# CoOp's per-dataset template (docs/BASELINES.md) and MoCoOp's expert count G (docs/MOCOOP.md,
# "Experts of each dataset") of each benchmark dataset (tools.protocols.BENCHMARK).
DATASETS = {
    "caltech101": ("a photo of a {}.", 5),
    "dtd": ("{} texture.", 5),
    "eurosat": ("a centered satellite photo of {}.", 6),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", 5),
    "food101": ("a photo of {}, a type of food.", 4),
    "oxford_flowers": ("a photo of a {}, a type of flower.", 5),
    "oxford_pets": ("a photo of a {}, a type of pet.", 6),
    "stanford_cars": ("a photo of a {}.", 5),
    "sun397": ("a photo of a {}.", 4),
    "ucf101": ("a photo of a person doing {}.", 6),
    "imagenet": ("a photo of a {}.", 20),
}
PROMPT_KEYS = {
    "TEMPLATE",
    "KNOWLEDGE_TEMPLATE",
    "PROGRAD_TEMPLATE",
    "EXPERT_GROUPS",
    "EXPERT_TEMPLATES",
    "TEACHER_TEMPLATES",
}


def load(stem):
    with open(os.path.join(CONFIG_DIR, f"{stem}.yaml")) as f:
        return yaml.safe_load(f)


def prompts(stem):
    return load(stem)["DATASET"]["PROMPTS"]


def assert_one_placeholder(template, where):
    assert isinstance(template, str), f"{where}: {template!r} is not a string"
    # Stray braces would make str.format fail or eat the class name.
    assert template.count("{}") == 1 and template.count("{") == 1 and template.count("}") == 1, (
        f"{where}: {template!r} must contain exactly one '{{}}'"
    )
    assert template.format("x") != template


def all_dataset_templates(stem):
    p = prompts(stem)
    yield "TEMPLATE", p["TEMPLATE"]
    if "KNOWLEDGE_TEMPLATE" in p:
        yield "KNOWLEDGE_TEMPLATE", p["KNOWLEDGE_TEMPLATE"]
    for key in ("EXPERT_TEMPLATES", "TEACHER_TEMPLATES"):
        for t in p[key]:
            yield key, t


# ---- shared pools -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hard_prompts.POOLS))
def test_pool_templates_have_one_placeholder(name):
    for t in hard_prompts.POOLS[name]:
        assert_one_placeholder(t, f"POOLS[{name!r}]")


@pytest.mark.parametrize("name, size", [("imagenet80", 80), ("ensemble7", 7), ("lasp", 34), ("noisy", 12)])
def test_pool_sizes_and_distinct(name, size):
    pool = hard_prompts.POOLS[name]
    assert len(pool) == size
    assert len(set(pool)) == size, f"{name} repeats a template"


def test_ensemble_is_clips_forward_selection_subset():
    assert hard_prompts.ENSEMBLE_7 == (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    )
    assert set(hard_prompts.ENSEMBLE_7) <= set(hard_prompts.IMAGENET_80)


def test_imagenet_experts_come_from_the_lasp_pool():
    # Both are MoCoOp's Appendix A list (the experts leave out two of its 34 templates).
    experts = prompts("imagenet")["EXPERT_TEMPLATES"]
    assert set(experts) <= set(hard_prompts.LASP_34)
    assert set(hard_prompts.LASP_34) - set(experts) == {"a rendition of the {}.", "a photo of the {}."}


# ---- dataset configs --------------------------------------------------------------------------


def test_every_config_file_is_covered():
    stems = {f[: -len(".yaml")] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")}
    # The generated demo world's prompts are checked against its generator in
    # tests/test_demo_world_dataset.py, ImageFolder's generic set in tests/test_image_folder.py.
    assert stems == set(ALL) | {"demo_world", "image_folder"}
    assert set(DATASETS) == set(BENCHMARK)


@pytest.mark.parametrize("stem", sorted(DATASETS))
def test_dataset_prompt_keys(stem):
    cfg = load(stem)
    assert set(cfg) == {"DATASET"}
    assert cfg["DATASET"]["NAME"] == REGISTERED[stem]
    p = cfg["DATASET"]["PROMPTS"]
    assert set(p) <= PROMPT_KEYS
    assert PROMPT_KEYS - set(p) <= {"KNOWLEDGE_TEMPLATE", "PROGRAD_TEMPLATE"}


@pytest.mark.parametrize("stem", sorted(DATASETS))
def test_dataset_templates_have_one_placeholder(stem):
    for key, t in all_dataset_templates(stem):
        assert_one_placeholder(t, f"{stem}.yaml DATASET.PROMPTS.{key}")


@pytest.mark.parametrize("stem", sorted(DATASETS))
def test_coop_template(stem):
    assert prompts(stem)["TEMPLATE"] == DATASETS[stem][0]


def test_knowledge_template_only_where_kgcoop_differs():
    with_key = {stem for stem in DATASETS if "KNOWLEDGE_TEMPLATE" in prompts(stem)}
    assert with_key == {"dtd"}
    assert prompts("dtd")["KNOWLEDGE_TEMPLATE"] == "a photo of a {}, a type of texture."


@pytest.mark.parametrize("stem", sorted(DATASETS))
def test_expert_groups(stem):
    p = prompts(stem)
    groups, templates = p["EXPERT_GROUPS"], p["EXPERT_TEMPLATES"]
    assert all(isinstance(g, int) and g >= 1 for g in groups), groups
    assert sum(groups) == len(templates)
    assert len(groups) == DATASETS[stem][1]
    assert len(set(templates)) == len(templates), f"{stem}: an expert template is repeated"


@pytest.mark.parametrize("stem", sorted(DATASETS))
def test_expert_initialisers_give_prompt_forms(stem):
    p = prompts(stem)
    firsts, start = [], 0
    for g in p["EXPERT_GROUPS"]:
        firsts.append(p["EXPERT_TEMPLATES"][start])
        start += g
    forms = [PromptForm.from_template(t) for t in firsts]
    assert all(f.n_ctx > 0 for f in forms)
    # Identical initialisers would make two experts start as copies of each other.
    assert len({f.init_ids + (f.n_before,) for f in forms}) == len(forms)


def test_dataset_specific_experts_come_first():
    expected = {
        "caltech101": "{} texture.",
        "dtd": "{} texture.",
        "eurosat": "a centered satellite photo of {}.",
        "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
        "food101": "a photo of {}, a type of food.",
        "oxford_flowers": "a photo of a {}, a type of flower.",
        "oxford_pets": "a photo of the small {}.",
        "sun397": "a photo of a {}.",
        "ucf101": "a photo of a person doing {}.",
        "imagenet": "a photo of a {}, a type of flower.",
    }
    for stem, first in expected.items():
        assert prompts(stem)["EXPERT_TEMPLATES"][0] == first, stem


@pytest.mark.parametrize("stem", sorted(DATASETS))
def test_teacher_pool(stem):
    teachers = prompts(stem)["TEACHER_TEMPLATES"]
    assert len(teachers) == 12
    assert len(set(teachers)) == 12
    forms = ("classified as {}.", "categorized as {}.", "labeled as {}.")
    labelled = [t for t in teachers if t.endswith(forms)]
    assert len(labelled) == 9, f"{stem}: MoPD's pool has 3 'type-of' and 9 'labelled' forms"


# ---- ImageNet variants ------------------------------------------------------------------------


@pytest.mark.parametrize("stem", DG_TARGETS)
def test_variants_inherit_imagenet_prompts(stem):
    cfg = load(stem)
    assert next(iter(cfg)) == "_BASE_", "_BASE_ must be the first key"
    assert cfg["_BASE_"] == "imagenet.yaml"
    assert os.path.isfile(os.path.join(CONFIG_DIR, cfg["_BASE_"]))
    assert cfg["DATASET"] == {"NAME": REGISTERED[stem]}, "a variant overrides DATASET.NAME only"
