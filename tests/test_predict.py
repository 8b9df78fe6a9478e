"""predict.py: predictions of a trained run on its own test images reproduce its test accuracy
(and, image by image, the probabilities of the trainer's evaluation); other class sets (the new
classes of base-to-new, another dataset, a file), the refusal of class-specific context for other
classes, missing and unreadable inputs, and the output formats."""

import csv
import json
import os
import re
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from PIL import Image

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import predict
import trainers
from clipprompt.caching import CachedTextFeatures
from tests.conftest import ROOT
from tests.e2e import CASES, DTD, PETS, TINY_OPTS, read_log, run_train
from tests.saved_runs import saved_run

pytestmark = pytest.mark.e2e

ROUTED = {"MoCoOp": "expert", "MoPD": "teacher"}


def run_predict(*args, check=True):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "predict.py"), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"predict.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def logged_result(run):
    """(total, correct) of the last result block of a run's log."""
    total, correct = re.findall(r"=> result\n\* total: ([\d,]+)\n\* correct: ([\d,]+)", read_log(run))[-1]
    return int(total.replace(",", "")), int(correct.replace(",", ""))


def evaluated_trainer(run, model_dir=None):
    """The run's trainer with its data (the test split it evaluated), loaded from the checkpoint
    of `model_dir` (default: the run's own)."""
    name = trainers.read_config_file(os.path.join(run, "config.yaml"))["TRAINER"]["NAME"]
    trainer = trainers.build_trainer(trainers.make_cfg(name, config_file=os.path.join(run, "config.yaml")))
    if any(p.requires_grad for p in trainer.model.parameters()):
        trainer.load_model(model_dir or run)
    trainer.set_model_mode("eval")
    return trainer


def evaluation_probabilities(trainer):
    """{image path: softmax of the trainer's model_inference logits} over its test loader."""
    probs = {}
    model = trainer.model
    cache = model.cached_text_features() if isinstance(model, CachedTextFeatures) else nullcontext()
    with torch.no_grad(), cache:
        for batch in trainer.test_loader:
            logits = trainer.model_inference(batch["img"])
            probs.update(zip(batch["impath"], logits.softmax(dim=-1)))
    return probs


def check_against_evaluation(records, trainer, run):
    """Every test image predicted as the trainer evaluates it, and the log's accuracy exactly."""
    expected = evaluation_probabilities(trainer)
    truth = {d.impath: d.classname for d in trainer.dm.dataset.test}
    assert [r["image"] for r in records] == list(truth)
    for r in records:
        probs = expected[r["image"]]
        top = probs.topk(len(r["top"]))
        assert [t["label"] for t in r["top"]] == top.indices.tolist()
        assert [t["probability"] for t in r["top"]] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert [t["class"] for t in r["top"]] == [trainer.classnames[i] for i in top.indices.tolist()]
    correct = sum(r["top"][0]["class"] == truth[r["image"]] for r in records)
    assert (len(records), correct) == logged_result(run)


@pytest.mark.parametrize("name", list(CASES))
def test_predictions_on_the_test_split_reproduce_the_run(name, base_run, tmp_path):
    run = base_run(name)
    trainer = evaluated_trainer(run)
    out = tmp_path / "preds.jsonl"
    proc = run_predict("--model-dir", run, "--output", out, *[d.impath for d in trainer.dm.dataset.test])
    assert f"3 classes from the run's checkpoint: {', '.join(trainer.classnames)}" in proc.stdout
    records = read_jsonl(out)
    check_against_evaluation(records, trainer, run)
    assert all(len(r["top"]) == 3 and r["error"] is None for r in records)
    assert all(sum(t["probability"] for t in r["top"]) == pytest.approx(1.0, abs=1e-5) for r in records)
    routed = CASES[name].trainer in ROUTED
    assert all(("routing" in r) == routed for r in records)
    if routed:
        names = trainer.model.routing_names
        for r in records:
            assert len(r["routing"]) == trainer.model.top_k
            assert all(g["template"] == names[g["index"]] for g in r["routing"])
            assert sum(g["weight"] for g in r["routing"]) == pytest.approx(1.0, abs=1e-5)
    assert "100%" in proc.stderr  # 9 images, batches of 8: a progress bar


def test_zeroshot_run_without_checkpoint_takes_its_dataset_classes(pets, tiny_clip_path, tmp_path):
    run = str(tmp_path / "zeroshot")
    args = ["--trainer", "ZeroshotCLIP", "--config-file", "configs/trainers/ZeroshotCLIP/vit_b16.yaml"]
    args += ["--dataset-config-file", PETS, "--root", pets, "--output-dir", run, "--eval-only"]
    run_train(*args, "MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS, "DATASET.SUBSAMPLE_CLASSES", "base")
    trainer = evaluated_trainer(run)
    out = tmp_path / "preds.jsonl"
    proc = run_predict("--model-dir", run, "--output", out, *[d.impath for d in trainer.dm.dataset.test])
    assert f"3 classes from dataset OxfordPets under {pets} (base classes)" in proc.stdout
    check_against_evaluation(read_jsonl(out), trainer, run)


def test_new_classes_of_a_base_run_reproduce_its_test_new_evaluation(
    base_run, pets, tiny_clip_path, tmp_path
):
    run = base_run("MoCoOp-release")  # virtual classes, image LayerNorms, text bias
    new = str(tmp_path / "test_new")
    args = CASES["MoCoOp-release"].args(pets, tiny_clip_path, new, "DATASET.SUBSAMPLE_CLASSES", "new")
    run_train(*args, "--eval-only", "--model-dir", run)
    trainer = evaluated_trainer(new, model_dir=run)
    out = tmp_path / "preds.jsonl"
    test_images = [d.impath for d in trainer.dm.dataset.test]
    proc = run_predict("--model-dir", run, "--subsample-classes", "new", "--output", out, *test_images)
    assert f"3 classes from dataset OxfordPets under {pets} (new classes)" in proc.stdout
    check_against_evaluation(read_jsonl(out), trainer, new)


def test_another_dataset_as_cross_dataset_evaluation_sees_it(base_run, dtd, tiny_clip_path, tmp_path):
    """A pets-trained MoCoOp on DTD's classes: the experts stay the run's, as in the xd protocol
    (DATASET.SOURCE_CONFIG)."""
    run = base_run("MoCoOp-paper")
    xd = str(tmp_path / "xd")
    case = CASES["MoCoOp-paper"]._replace(dataset_config=DTD)
    run_train(
        *case.args(dtd, tiny_clip_path, xd, "DATASET.SOURCE_CONFIG", PETS), "--eval-only", "--model-dir", run
    )
    trainer = evaluated_trainer(xd, model_dir=run)
    out = tmp_path / "preds.jsonl"
    test_images = [d.impath for d in trainer.dm.dataset.test]
    proc = run_predict(
        "--model-dir", run, "--dataset-config-file", DTD, "--root", dtd, "--output", out, *test_images
    )
    assert f"6 classes from dataset DescribableTextures under {dtd} (all classes)" in proc.stdout
    records = read_jsonl(out)
    check_against_evaluation(records, trainer, xd)
    assert all(len(r["top"]) == 5 for r in records)


@pytest.fixture
def coop_run(pets, tiny_clip_path, tmp_path):
    """A saved CoOp run on the pets base classes (`csc`: class-specific context)."""

    def make(csc=False):
        opts = ["MODEL.BACKBONE.NAME", tiny_clip_path, *TINY_OPTS, "DATASET.SUBSAMPLE_CLASSES", "base"]
        opts += ["TRAINER.COOP.CSC", csc, "DATASET.NUM_SHOTS", 4]
        config = "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"
        cfg = trainers.make_cfg("CoOp", PETS, config, opts, root=pets, seed=1)
        run = tmp_path / f"coop_csc{csc}"
        saved_run(cfg, run)
        return str(run)

    return make


def test_class_specific_context_refuses_other_classes(coop_run, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("tabby cat\n\n  robin \nsalmon\n", encoding="utf-8")
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    out = tmp_path / "preds.csv"
    with pytest.raises(SystemExit, match="class names differ .the tensors are class-specific.: label 0 is"):
        predict.main(
            ["--model-dir", coop_run(csc=True), "--classnames", str(names), "--output", str(out), str(image)]
        )
    assert not out.exists()
    # Shared context: the same file gives the prompt to those classes.
    predict.main(["--model-dir", coop_run(), "--classnames", str(names), "--output", str(out), str(image)])
    assert "3 classes from --classnames" in capsys.readouterr().out
    with open(out, newline="", encoding="utf-8") as f:
        header, row = list(csv.reader(f))
    assert header == [
        "image",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
        "error",
    ]
    assert row[0] == str(image) and set(row[1:7:2]) == {"tabby cat", "robin", "salmon"} and row[-1] == ""
    with pytest.raises(SystemExit) as refused:
        predict.parse_args(["--model-dir", "x", "--output", str(out), str(image)])
    assert refused.value.code == 2  # an existing output without --overwrite


def test_missing_and_unreadable_images_are_listed(coop_run, tmp_path, capsys):
    run = coop_run()
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for path in (folder / "a.jpg", folder / "sub" / "b.png", folder / ".hidden" / "c.jpg", folder / ".d.jpg"):
        Image.new("RGB", (40, 40), (0, 120, 200)).save(path)
    (folder / "notes.txt").write_text("not an image")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")  # its header does not parse
    truncated = folder / "truncated.png"
    data = (folder / "sub" / "b.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the header parses, the pixels do not
    inputs = [str(folder), str(tmp_path / "gone.jpg"), str(tmp_path / "*.webp")]
    out = tmp_path / "preds.jsonl"
    args = ["--model-dir", run, "--output", str(out), *inputs]

    with pytest.raises(
        SystemExit,
        match=re.escape(
            f"{tmp_path / 'gone.jpg'} (not found); {tmp_path / '*.webp'} (pattern matches no file)"
        ),
    ):
        predict.main(args)
    with pytest.raises(SystemExit, match=re.escape(f"1 of 4 images cannot be read: {empty} (")):
        predict.main(["--model-dir", run, "--output", str(out), str(folder)])
    (folder / "empty.jpg").unlink()
    with pytest.raises(SystemExit, match=re.escape(f"1 of 3 images cannot be decoded: {truncated} (OSError")):
        predict.main(["--model-dir", run, "--output", str(out), str(folder)])
    assert not out.exists()

    empty.write_bytes(b"")
    predict.main([*args, "--skip-bad", "--batch-size", "2"])
    records = read_jsonl(out)
    assert [r["image"] for r in records] == [
        str(folder / "a.jpg"), str(empty), str(folder / "sub" / "b.png"), str(truncated),
        str(tmp_path / "gone.jpg"), str(tmp_path / "*.webp"),
    ]  # fmt: skip
    errors = [r["error"] for r in records]
    assert errors[0] is None and errors[2] is None and len(records[0]["top"]) == 3
    assert errors[1].startswith("UnidentifiedImageError") and errors[3].startswith("OSError")
    assert errors[4:] == ["not found", "pattern matches no file"]
    printed = capsys.readouterr().out
    assert "Predicted 2 images" in printed and "Skipped 4 (--skip-bad)" in printed


def test_labelled_folder_gives_accuracy_per_class_and_confusion_matrix(base_run, tmp_path):
    """Class sub-folders named after the run's classes (as ImageFolder, underscores for spaces):
    the accuracy is the run's own test accuracy; a folder of another class is named and left out;
    `--output -` writes the predictions alone on stdout."""
    run = base_run("CoOp")
    trainer = evaluated_trainer(run)
    folder = tmp_path / "labelled"
    for item in trainer.dm.dataset.test:
        target = folder / item.classname.replace(" ", "_") / os.path.basename(item.impath)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(item.impath)
    (folder / "sphynx").mkdir()
    (folder / "sphynx" / "x.png").symlink_to(trainer.dm.dataset.test[0].impath)
    out = tmp_path / "preds.csv"
    proc = run_predict("--model-dir", run, "--output", out, folder)
    total, correct = logged_result(run)
    assert (
        f"Accuracy on {total} labelled images of 3 classes: {100 * correct / total:.2f} % ({correct} correct)"
        in (proc.stdout)
    )
    assert (
        f"1 class folder(s) name no class of the run; their images are predicted but left out of the accuracy: {folder / 'sphynx'} (1 images)"
        in proc.stdout
    )
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    truth = {r["image"]: r["true_class"] for r in rows}
    assert truth[str(folder / "sphynx" / "x.png")] == "" and len(rows) == total + 1
    metrics_dir = tmp_path / "preds_metrics"
    with open(metrics_dir / "confusion_matrix.csv", newline="", encoding="utf-8") as f:
        header, *matrix = list(csv.reader(f))
    assert header[1:] == trainer.classnames and [row[0] for row in matrix] == trainer.classnames
    counts = [[int(x) for x in row[1:]] for row in matrix]
    for c, name in enumerate(trainer.classnames):  # each row: the top-1 predictions of that folder
        predicted = [r["class_1"] for r in rows if r["true_class"] == name]
        assert counts[c] == [predicted.count(other) for other in trainer.classnames]
    assert sum(counts[c][c] for c in range(3)) == correct and sum(map(sum, counts)) == total
    summary = json.loads((metrics_dir / "summary.json").read_text())
    assert (summary["images"], summary["correct"]) == (total, correct)
    assert (metrics_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="error: --metrics-dir .* already holds summary.json"):
        predict.main(
            [
                "--model-dir",
                run,
                "--output",
                str(tmp_path / "again.csv"),
                "--metrics-dir",
                str(metrics_dir),
                str(folder),
            ]
        )

    proc = run_predict("--model-dir", run, "--output", "-", "--format", "jsonl", folder)
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing else on stdout
    assert [r["image"] for r in records] == [r["image"] for r in rows]
    assert [r.get("true_class", "") for r in records] == [r["true_class"] for r in rows]
    assert f"({correct} correct)" in proc.stderr and "Predicted" in proc.stderr
