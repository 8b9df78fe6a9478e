"""The demo world as a Dassl dataset, and its prompts in configs/datasets/demo_world.yaml."""

import pytest

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from tools.demo import world
from tools.demo.dataset import generate


def cfg_for(root, *opts):
    return trainers.make_cfg("MoCoOp", "configs/datasets/demo_world.yaml", opts=opts, root=str(root), seed=1)


def test_config_prompts_are_the_worlds_style_templates(tmp_path):
    prompts = cfg_for(tmp_path).DATASET.PROMPTS
    styles = [world.STYLE_TEMPLATES[s] for s in world.STYLES]
    assert list(prompts.EXPERT_TEMPLATES) == styles
    assert list(prompts.EXPERT_GROUPS) == [1] * len(styles)
    assert list(prompts.TEACHER_TEMPLATES) == [*styles, world.GENERIC_TEMPLATE]
    assert prompts.TEMPLATE == world.GENERIC_TEMPLATE


@pytest.mark.parametrize("subsample, first", [("base", 0), ("new", 20)])
def test_reader_splits_base_and_new(tmp_path, subsample, first):
    from datasets.demo_world import DemoWorld

    generate(str(tmp_path), split_sizes={"train": 2, "val": 1, "test": 1}, log=lambda *a: None)
    dataset = DemoWorld(cfg_for(tmp_path, "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", subsample))
    assert dataset.all_classnames == list(world.CLASSNAMES)
    assert dataset.classnames == list(world.CLASSNAMES[first : first + 20])
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
    generate(str(tmp_path), split_sizes=sizes, log=lambda *a: None)
    DemoWorld(cfg_for(tmp_path, "DATASET.NUM_SHOTS", "1"))  # writes split_fewshot/shot_1-seed_1.json
    messages = []
    generate(str(tmp_path), split_sizes=sizes, log=messages.append)
    assert "already holds this world" in messages[0]


@pytest.mark.e2e
def test_routing_report_evaluates_the_trained_model(tmp_path):
    """tools.demo_routing rebuilds the run from its config.yaml: its accuracy over all styles is
    the run's own final test accuracy, and every test image is counted under its style."""
    import os
    import subprocess
    import sys

    from tests.e2e import read_log, result_accuracy, run_train

    root, run = tmp_path / "data", tmp_path / "run"
    # 11 test images per class: one in every style.
    generate(str(root), split_sizes={"train": 2, "val": 1, "test": 11}, log=lambda *a: None)
    run_train(
        "--root",
        root,
        "--seed",
        "1",
        "--trainer",
        "MoCoOp",
        "--output-dir",
        run,
        "--dataset-config-file",
        "configs/datasets/demo_world.yaml",
        "--config-file",
        "configs/trainers/MoCoOp/demo.yaml",
        "DATASET.NUM_SHOTS",
        "2",
        "DATASET.SUBSAMPLE_CLASSES",
        "base",
        "OPTIM.MAX_EPOCH",
        "1",
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    report = subprocess.run(
        [sys.executable, "-m", "tools.demo_routing", str(run), "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.splitlines()
    table = report[report.index(next(line for line in report if line.startswith("style"))) + 1 :]
    rows = {line.split()[0]: [float(x.rstrip("%")) for x in line.split()[1:]] for line in table}
    assert set(rows) == {*world.STYLES, "all"}
    assert rows["all"][3] == pytest.approx(result_accuracy(read_log(run)), abs=0.05)
