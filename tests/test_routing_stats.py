"""Routing statistics per class (clipprompt.routing.RoutingStats): recorded at evaluation, where
the labels are known, against a loop over images; older files without them still resume; and a
trained run's test record against the routing of its own test images."""

import csv
import json
import os

import pytest
import torch

from clipprompt.routing import topk_softmax
from trainers.runs.routing_stats import RoutingStats

NAMES = ["a photo of a {}.", "itap of a {}.", "a sketch of a {}.", "art of the {}."]
CLASSES = ["cat", "dog", "owl"]


def loop_reference(batches, num_classes, num_names, k):
    """Per class: (images, selection share per candidate, mean weight per candidate), image by image."""
    images = [0] * num_classes
    counts = [[0.0] * num_names for _ in range(num_classes)]
    weights = [[0.0] * num_names for _ in range(num_classes)]
    for index, weight, label in batches:
        for i in range(index.shape[0]):
            c = int(label[i])
            images[c] += 1
            for j in range(k):
                counts[c][int(index[i, j])] += 1
                weights[c][int(index[i, j])] += float(weight[i, j])
    shares = [[x / (n * k) for x in row] if n else None for row, n in zip(counts, images)]
    means = [[x / n for x in row] if n else None for row, n in zip(weights, images)]
    return images, shares, means


def random_batches(num_batches, batch, num_classes, labels_from=0):
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(num_batches):
        index, weight = topk_softmax(torch.randn(batch, len(NAMES), generator=generator), 2)
        label = torch.randint(labels_from, num_classes, (batch,), generator=generator)
        batches.append((index, weight, label))
    return batches


def test_per_class_shares_equal_a_loop_over_images(tmp_path):
    stats = RoutingStats(NAMES, 2, CLASSES)
    batches = random_batches(3, 5, 2)  # no image of the last class
    for index, weight, label in batches:
        stats.update(index, weight, label)
    record = stats.close(4, "test")
    images, shares, means = loop_reference(batches, len(CLASSES), len(NAMES), 2)
    per_class = record["per_class"]
    assert per_class["images"] == images and images[2] == 0 and sum(images) == record["count"] == 15
    assert per_class["selection_share"][2] is None and per_class["mean_weight"][2] is None
    for c in range(2):
        assert per_class["selection_share"][c] == pytest.approx(shares[c], abs=1e-12)
        assert per_class["mean_weight"][c] == pytest.approx(means[c], abs=1e-12)
        assert sum(per_class["selection_share"][c]) == pytest.approx(1.0)
    # Without labels (training) no per-class record; the overall one is unchanged by them.
    for index, weight, _ in batches:
        stats.update(index, weight)
    plain = stats.close(5, "train")
    assert "per_class" not in plain and plain["selection_share"] == pytest.approx(record["selection_share"])

    stats.write(str(tmp_path), "expert_stats")
    saved = json.loads((tmp_path / "expert_stats.json").read_text())
    assert saved["classnames"] == CLASSES and saved["records"][0]["per_class"] == per_class
    with open(tmp_path / "expert_stats_per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CLASSES) * len(NAMES)  # the test record only
    row = next(r for r in rows if r["class"] == "dog" and r["name"] == NAMES[1])
    assert float(row["selection_share"]) == pytest.approx(shares[1][1]) and row["images"] == str(images[1])
    assert all(r["selection_share"] == "" for r in rows if r["class"] == "owl")


def test_labels_that_do_not_fit_the_classes_are_an_error():
    stats = RoutingStats(NAMES, 2, CLASSES)
    index, weight, _ = random_batches(1, 4, 3)[0]
    with pytest.raises(ValueError, match="index the 3 classes"):
        stats.update(index, weight, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="one per image"):
        stats.update(index, weight, torch.tensor([0, 1]))


def test_a_file_written_before_per_class_records_still_resumes(tmp_path):
    old = {"names": NAMES, "top_k": 2, "records": [
        {"epoch": 1, "split": "train", "count": 8, "selection_share": [0.25] * 4, "mean_weight": [0.25] * 4},
        {"epoch": 2, "split": "test", "count": 8, "selection_share": [0.25] * 4, "mean_weight": [0.25] * 4},
    ]}  # fmt: skip
    (tmp_path / "expert_stats.json").write_text(json.dumps(old))
    stats = RoutingStats(NAMES, 2, CLASSES)
    stats.restore(str(tmp_path), "expert_stats", 1)
    assert stats.records == old["records"][:1]
    stats.write(str(tmp_path), "expert_stats")
    assert not os.path.exists(tmp_path / "expert_stats_per_class.csv")


@pytest.mark.parametrize("case, stem", [("MoCoOp-paper", "expert_stats"), ("MoPD", "teacher_stats")])
@pytest.mark.e2e
def test_a_trained_run_records_the_routing_of_each_test_class(case, stem, base_run):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    import trainers

    run = base_run(case)
    with open(os.path.join(run, f"{stem}.json")) as f:
        saved = json.load(f)
    test = next(r for r in saved["records"] if r["split"] == "test")
    assert all("per_class" not in r for r in saved["records"] if r["split"] == "train")

    # The run's own test images through its model, counted image by image.
    cfg = trainers.make_cfg(case.split("-")[0], config_file=os.path.join(run, "config.yaml"))
    trainer = trainers.build_trainer(cfg)
    trainer.load_model(run)
    batches = []
    with torch.no_grad():
        for batch in trainer.test_loader:
            _, routing = trainer.model.classify(batch["img"])
            batches.append((routing.index, routing.weight, batch["label"]))
    assert saved["classnames"] == trainer.classnames
    images, shares, means = loop_reference(
        batches, len(trainer.classnames), len(saved["names"]), saved["top_k"]
    )
    assert test["per_class"]["images"] == images == [3, 3, 3]
    for c in range(len(images)):
        assert test["per_class"]["selection_share"][c] == pytest.approx(shares[c], abs=1e-9)
        assert test["per_class"]["mean_weight"][c] == pytest.approx(means[c], abs=1e-6)
