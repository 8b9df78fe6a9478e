"""What every figure of tools.plots shares: a canvas sized to its panels, the order and colours of
methods (zero-shot CLIP first), values written on bars, and saving (PNG, Agg backend)."""

import matplotlib

matplotlib.use("Agg")  # before pyplot: the figure modules take `plt` from here
import matplotlib.pyplot as plt

DPI = 100
ZERO_SHOT = "ZeroshotCLIP"


def panel_grid(n, ncols=3, width=4.6, height=3.4, sharey=False):
    """(figure, n axes): n panels of `width` x `height` inches in rows of at most `ncols`, as
    evenly filled as possible; the canvas holds the panels and nothing else."""
    nrows = -(-n // max(1, ncols))
    ncols = max(1, -(-n // nrows))  # rows as full as possible: 4 panels in 2 x 2, not 3 + 1
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=sharey
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def method_key(label):
    """Sort key of a "Trainer / config" label: zero-shot CLIP first, then by name."""
    trainer = label.split(" / ")[0]
    return (trainer != ZERO_SHOT, label)


def method_colours(labels):
    """{label: colour} in method order; the same label gets the same colour in every figure of a
    call as long as the set of methods is the same."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(sorted(labels, key=method_key))}


def label_bars(ax, bars, values, fmt="{:.1f}", inside_min=12.0, fontsize=7):
    """Write each bar's value on it, vertically: inside from the foot of a tall bar (white, clear
    of error bars), above a short one."""
    top = ax.get_ylim()[1]
    for bar, value in zip(bars, values):
        x = bar.get_x() + bar.get_width() / 2
        inside = value >= inside_min * top / 100
        ax.text(
            x,
            0.02 * top if inside else value + 0.01 * top,
            fmt.format(value),
            ha="center",
            va="bottom",
            rotation=90,
            fontsize=fontsize,
            color="white" if inside else "black",
        )


def legend_below(fig, handles, labels, ncol=4, title=None):
    """One legend for the whole figure, centred under its panels."""
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=max(1, min(ncol, len(labels))),
        fontsize=9,
        title=title,
        frameon=False,
    )


def save(fig, path):
    """Write the figure; the canvas is cropped to what is drawn (legends below the panels too)."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path
