"""The confusion matrix of a labelled prediction as a figure (predict.py, tools.labelled.metrics)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ANNOTATED = 30  # classes up to which every cell shows its count


def confusion_figure(result, classnames, file):
    """Rows: the true classes that have images; columns: those and any other class predicted.
    Colour: the share of the row's images (so that rare classes show as clearly as common ones);
    numbers: the image counts. Written as PNG to `file` (a path or a binary file object)."""
    confusion = np.array(result["confusion"])
    rows = [c for c in range(len(classnames)) if confusion[c].sum()]
    cols = sorted(set(rows) | {c for c in range(len(classnames)) if confusion[:, c].sum()})
    counts = confusion[np.ix_(rows, cols)]
    shares = 100.0 * counts / counts.sum(axis=1, keepdims=True)
    longest = max(len(classnames[c]) for c in set(rows) | set(cols))
    side = 0.32 * max(len(rows), len(cols))
    fig, ax = plt.subplots(
        figsize=(min(40, 3.0 + side + 0.06 * longest), min(40, 2.5 + side + 0.06 * longest))
    )
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    step = max(1, max(len(rows), len(cols)) // 80)  # at most ~80 labels per axis
    ax.set_yticks(range(0, len(rows), step), [classnames[c] for c in rows][::step], fontsize=8)
    ax.set_xticks(
        range(0, len(cols), step), [classnames[c] for c in cols][::step], fontsize=8, rotation=60, ha="right"
    )
    ax.set_ylabel("true class (folder)")
    ax.set_xlabel("predicted class (top 1)")
    if max(len(rows), len(cols)) <= ANNOTATED:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(
                    j,
                    i,
                    str(n),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 60 else "black",
                )
    for i, c in enumerate(rows):  # the diagonal, where the column exists
        if c in cols:
            ax.add_patch(
                plt.Rectangle(
                    (cols.index(c) - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="0.2", linewidth=0.6
                )
            )
    fig.colorbar(image, ax=ax, label="% of the true class's images", fraction=0.04)
    ax.set_title(
        f"Confusion matrix: {result['images']} images, accuracy {result['accuracy']:.2f} %, "
        f"mean per-class {result['mean_per_class_accuracy']:.2f} %",
        fontsize=10,
    )
    fig.savefig(file, format="png", dpi=100, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
