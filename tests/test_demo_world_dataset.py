"""The demo world as a Dassl dataset, and its prompts in configs/datasets/demo_world.yaml."""

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import train
from tools import demo_world


def cfg_for(root, *opts):
    return train.setup_cfg(train.parse_args([
        "--trainer", "MoCoOp", "--root", str(root), "--seed", "1",
        "--dataset-config-file", "configs/datasets/demo_world.yaml", *opts,
    ]))


def test_config_prompts_are_the_worlds_style_templates(tmp_path):
    prompts = cfg_for(tmp_path).DATASET.PROMPTS
    styles = [demo_world.STYLE_TEMPLATES[s] for s in demo_world.STYLES]
    assert list(prompts.EXPERT_TEMPLATES) == styles
    assert list(prompts.EXPERT_GROUPS) == [1] * len(styles)
    assert list(prompts.TEACHER_TEMPLATES) == [*styles, demo_world.GENERIC_TEMPLATE]
    assert prompts.TEMPLATE == demo_world.GENERIC_TEMPLATE


@pytest.mark.parametrize("subsample, first", [("base", 0), ("new", 20)])
def test_reader_splits_base_and_new(tmp_path, subsample, first):
    from datasets.demo_world import DemoWorld

    demo_world.generate(str(tmp_path), split_sizes={"train": 2, "val": 1, "test": 1}, log=lambda *a: None)
    dataset = DemoWorld(cfg_for(tmp_path, "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", subsample))
    assert dataset.all_classnames == list(demo_world.CLASSNAMES)
    assert dataset.classnames == list(demo_world.CLASSNAMES[first : first + 20])
    assert len(dataset.train_x) == 40 and len(dataset.test) == 20
    assert sorted({d.label for d in dataset.test}) == list(range(20))


def test_missing_world_says_how_to_generate_it(tmp_path):
    from datasets.demo_world import DemoWorld

    with pytest.raises(FileNotFoundError, match="python -m tools.demo_world --root"):
        DemoWorld(cfg_for(tmp_path))


def test_regenerating_after_training_keeps_the_world(tmp_path):
    """Training writes few-shot caches into the world's folder; the generator must still
    recognise the world as its own (README's demo command is re-runnable)."""
    from datasets.demo_world import DemoWorld

    sizes = {"train": 2, "val": 1, "test": 1}
    demo_world.generate(str(tmp_path), split_sizes=sizes, log=lambda *a: None)
    DemoWorld(cfg_for(tmp_path, "DATASET.NUM_SHOTS", "1"))  # writes split_fewshot/shot_1-seed_1.json
    messages = []
    demo_world.generate(str(tmp_path), split_sizes=sizes, log=messages.append)
    assert "already holds this world" in messages[0]
