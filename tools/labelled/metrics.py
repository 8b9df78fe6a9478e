"""Accuracy, per-class accuracy and the confusion matrix of predictions whose true classes are
known (tools.labelled.labels), printed and written as files."""

import csv
import json
import os

from clipprompt.atomic import atomic_file

METRIC_FILES = ("summary.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")


def metrics(records, labels, classnames):
    """Accuracy, top-k accuracy, per-class accuracy and the confusion matrix (rows: true class,
    columns: predicted class, counts) of the predicted images with a true label."""
    n = len(classnames)
    confusion = [[0] * n for _ in range(n)]
    in_top = 0
    for r in records:
        if r["error"] is None and r["image"] in labels:
            truth = labels[r["image"]]
            confusion[truth][r["top"][0]["label"]] += 1
            in_top += any(t["label"] == truth for t in r["top"])
    images = [sum(row) for row in confusion]
    correct = [confusion[c][c] for c in range(n)]
    total = sum(images)
    per_class = [100.0 * correct[c] / images[c] if images[c] else None for c in range(n)]
    present = [a for a in per_class if a is not None]
    topk = len(next((r["top"] for r in records if r["error"] is None), []))
    return {
        "images": total,
        "correct": sum(correct),
        "accuracy": 100.0 * sum(correct) / total if total else None,
        f"top{topk}_accuracy": 100.0 * in_top / total if total else None,
        "mean_per_class_accuracy": sum(present) / len(present) if present else None,
        "classes_with_images": len(present),
        "per_class": [
            {"class": name, "images": images[c], "correct": correct[c], "accuracy": per_class[c]}
            for c, name in enumerate(classnames)
        ],
        "confusion": confusion,
    }


def summary_lines(result, classnames, metrics_dir):
    """What predict.py prints about a labelled prediction."""
    topk = next(k for k in result if k.startswith("top") and k.endswith("_accuracy"))
    lines = [
        (
            f"Accuracy on {result['images']} labelled images of {result['classes_with_images']} classes: "
            f"{result['accuracy']:.2f} % ({result['correct']} correct); mean per-class accuracy "
            f"{result['mean_per_class_accuracy']:.2f} %; top-{topk[3:].removesuffix('_accuracy')} accuracy {result[topk]:.2f} %"
        )
    ]
    rows = [r for r in result["per_class"] if r["images"]]
    worst = sorted(rows, key=lambda r: r["accuracy"])[: None if len(rows) <= 20 else 5]
    lines.append("Per class:" if len(worst) == len(rows) else "The 5 classes with the lowest accuracy:")
    width = max(len(r["class"]) for r in worst)
    for r in sorted(worst, key=lambda r: classnames.index(r["class"])):
        lines.append(f"  {r['class']:<{width}}  {r['accuracy']:6.2f} %  ({r['correct']}/{r['images']})")
    if metrics_dir:
        lines.append(f"Metrics and confusion matrix: {metrics_dir}/ ({', '.join(METRIC_FILES)})")
    return lines


def write_metrics(folder, result, classnames, notes, overwrite):
    """summary.json, per_class.csv, confusion_matrix.csv and .png in `folder`, each atomically."""
    os.makedirs(folder, exist_ok=True)
    check_metrics_dir(folder, overwrite)
    summary = {k: v for k, v in result.items() if k not in ("per_class", "confusion")}
    with atomic_file(os.path.join(folder, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({**summary, "classnames": classnames, "notes": notes}, f, indent=1, ensure_ascii=False)
    with atomic_file(os.path.join(folder, "per_class.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "class", "images", "correct", "accuracy"])
        for label, r in enumerate(result["per_class"]):
            accuracy = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            writer.writerow([label, r["class"], r["images"], r["correct"], accuracy])
    with atomic_file(os.path.join(folder, "confusion_matrix.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *classnames])
        for name, row in zip(classnames, result["confusion"]):
            writer.writerow([name, *row])
    from tools.labelled.figure import confusion_figure

    with atomic_file(os.path.join(folder, "confusion_matrix.png"), "wb") as f:
        confusion_figure(result, classnames, f)


def check_metrics_dir(folder, overwrite):
    """Refuse a folder that already holds metric files, unless `overwrite`."""
    existing = [name for name in METRIC_FILES if os.path.exists(os.path.join(folder, name))]
    if existing and not overwrite:
        raise SystemExit(
            f"error: --metrics-dir {folder} already holds {', '.join(existing)}: choose another folder, "
            "or pass --overwrite"
        )
