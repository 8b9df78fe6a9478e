"""Figures of the runs themselves, for every group of seeds (tools.results.rungroups): how training
went and what the router chose. Nothing is averaged over seeds: a router that collapses onto
one expert in one seed and onto another in the next shows as two collapses.

- `training_<group>.png` (runs with epoch lines in their log): a panel per loss term as the
  trainer logs it (`loss` is their weighted sum), the accuracy (training batches; the validation
  set after each epoch where the run evaluates it, TEST.FINAL_MODEL best_val; the final test),
  and the learning rate, against the epoch; a line per seed.
- `<expert|teacher>_routing_<group>.png` (runs with `expert_stats.json` or `teacher_stats.json`):
  a panel per seed with a bar per expert (MoCoOp) or teacher (MoPD): the share of images that
  have it among their top K in the run's last record (its test evaluation, else the last
  training epoch), with the uniform share K/G dashed; below, for runs that trained, the same share
  per epoch of training, a line per expert.
- `<expert|teacher>_routing_per_class_<group>.png` (evaluations that recorded routing per class):
  a heatmap per seed, a row per class and a column per expert or teacher: the share of the
  class's images that have it among their top K.
"""

import numpy as np
from matplotlib.ticker import MaxNLocator

from tools.results.epochs import read_epochs
from tools.results.figures import legend_below, panel_grid, plt, save
from tools.results.routing import STATS_FILES, last_record, read_stats
from tools.results.rungroups import file_stem
from tools.results.runlog import newest_log

SEED_STYLE = {"train": "-", "val": "--"}


def candidate_colours(n):
    """n distinguishable colours: tab20's ten saturated ones first, then its light ones."""
    tab20 = plt.get_cmap("tab20").colors
    return [tab20[((2 * i) % 20 + (2 * i) // 20) % 20] for i in range(n)]


def training_figure(group, out):
    logs = {label: read_epochs(newest_log(run)) for label, run in group.runs.items()}
    logs = {label: log for label, log in logs.items() if log.train}
    if not logs:
        return None
    meters = list(dict.fromkeys(m for log in logs.values() for m in log.meters()))
    losses = [m for m in meters if m not in ("acc", "lr")]  # lr: printed after the epoch's update
    panels = losses + ["accuracy"]
    fig, axes = panel_grid(len(panels), ncols=3, width=4.4, height=3.0)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, log) in enumerate(logs.items()):
        colour = colours[i % len(colours)]
        for ax, meter in zip(axes, panels):
            if meter == "accuracy":
                ax.plot(*log.series("acc"), SEED_STYLE["train"], color=colour)
                ax.plot(*log.evaluation_series("val"), "o--", color=colour, markersize=3)
                ax.plot(*log.evaluation_series("test"), "*", color=colour, markersize=11)
            else:
                ax.plot(*log.series(meter), color=colour)
    for ax, meter in zip(axes, panels):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title({"accuracy": "accuracy (%)", "loss": "loss (weighted sum)"}.get(meter, meter))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[i % len(colours)]) for i in range(len(logs))]
    kinds = {"training batches (epoch mean)": plt.Line2D([], [], color="0.3", linestyle="-")}
    if any(log.evaluation_series("val")[0] for log in logs.values()):
        kinds["validation set"] = plt.Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=3)
    if any(log.evaluation_series("test")[0] for log in logs.values()):
        kinds["test set (final model)"] = plt.Line2D(
            [], [], color="0.3", linestyle="", marker="*", markersize=11
        )
    handles += list(kinds.values())
    names = list(logs) + list(kinds)
    legend_below(fig, handles, names, ncol=len(names))
    fig.suptitle(f"{group.title}\ntraining, per epoch", fontsize=10)
    fig.tight_layout()
    return save(fig, out / f"training_{group.stem}.png")


def _group_stats(group, fname):
    """{seed label: Stats} of the group's runs that have the file; all of the same candidates."""
    found = {label: read_stats(run / fname) for label, run in group.runs.items() if (run / fname).is_file()}
    first = next(iter(found.values()), None)
    for stats in found.values():
        if stats.names != first.names:
            raise ValueError(
                f"{stats.path}: its candidates {stats.names} differ from those of {first.path}: {first.names}"
            )
    return found


def routing_figures(group, out):
    paths = []
    for fname, kind in STATS_FILES.items():
        found = _group_stats(group, fname)
        if found:
            paths.append(_routing_figure(group, kind, found, out))
            per_class = {k: v for k, v in found.items() if any("per_class" in r for r in v.records)}
            if per_class:
                paths.append(_per_class_figure(group, kind, per_class, out))
    return paths


def _routing_figure(group, kind, found, out):
    first = next(iter(found.values()))
    names, top_k = first.names, first.top_k
    uniform = 100.0 * top_k / len(names)
    trained = {
        label: sorted((r for r in stats.records if r["split"] == "train"), key=lambda r: r["epoch"])
        for label, stats in found.items()
    }
    trained = {label: train for label, train in trained.items() if len(train) > 1}
    cols = len(found)
    rows = 1 + bool(trained)
    height = 0.9 + 0.26 * len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 2.2, height + 3.0 * (rows - 1)), squeeze=False)
    colours = candidate_colours(len(names))
    for ax, (label, stats) in zip(axes[0], found.items()):
        record = last_record(stats.records)
        share = [100.0 * top_k * s for s in record["selection_share"]]
        ys = np.arange(len(names))
        ax.barh(ys, share, color=[colours[g] for g in range(len(names))])
        for y, value in zip(ys, share):
            ax.text(value + 1, y, f"{value:.0f}", va="center", fontsize=7)
        ax.axvline(uniform, color="0.2", linestyle="--", linewidth=1)
        ax.set_yticks(ys, names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 105)
        ax.set_xlabel(f"% of images with it in their top {top_k}")
        ax.set_title(f"{label}: {record['split']}, epoch {record['epoch']}", fontsize=9)
    for ax, label in zip(axes[1] if trained else [], found):
        if label not in trained:
            ax.set_visible(False)
            continue
        train = trained[label]
        epochs = [r["epoch"] for r in train]
        for g in range(len(names)):
            ax.plot(epochs, [100.0 * top_k * r["selection_share"][g] for r in train], color=colours[g])
        ax.axhline(uniform, color="0.2", linestyle="--", linewidth=1)
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"% of training images (top {top_k})")
        ax.set_title(f"{label}: training, per epoch", fontsize=9)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color="0.2", linestyle="--")]
    labels = [f"uniform: K/G = {top_k}/{len(names)} = {uniform:.0f} %"]
    if trained:
        handles += [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in range(len(names))]
        labels += names
    legend_below(fig, handles, labels, ncol=3)
    fig.suptitle(
        f"{group.title}\n{kind} routing per seed (G = {len(names)} {kind}s, top K = {top_k})", fontsize=10
    )
    fig.tight_layout()
    return save(fig, out / f"{file_stem(kind, 'routing', group.stem)}.png")


def _per_class_figure(group, kind, found, out):
    first = next(iter(found.values()))
    names, top_k, classnames = first.names, first.top_k, first.classnames
    panels = {}
    for label, stats in found.items():
        record = max(
            (r for r in stats.records if "per_class" in r), key=lambda r: (r["split"] == "test", r["epoch"])
        )
        shares = record["per_class"]["selection_share"]
        if stats.classnames != classnames or len(shares) != len(classnames):
            raise ValueError(
                f"{stats.path}: per-class shares of epoch {record['epoch']} do not match the "
                f"{len(classnames)} classes {classnames[:3]}... of {first.path}"
            )
        grid = [[np.nan] * len(names) if row is None else [100.0 * top_k * v for v in row] for row in shares]
        panels[label] = (np.ma.masked_invalid(grid), record)
    width = 1.2 + 0.42 * len(names)
    height = 1.8 + 0.2 * len(classnames) + 0.05 * max(map(len, names))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels) + 2.0, min(60, height)), squeeze=False, sharey=True
    )
    cmap = plt.get_cmap("Blues").with_extremes(bad="0.85")  # grey: a class without images
    step = max(1, len(classnames) // 80)  # at most ~80 class labels
    for ax, (label, (grid, record)) in zip(axes[0], panels.items()):
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=100)
        ax.set_xticks(range(len(names)), names, rotation=55, ha="right", fontsize=7)
        ax.set_yticks(range(0, len(classnames), step), classnames[::step], fontsize=7)
        if grid.size <= 400:
            for (c, g), value in np.ndenumerate(grid.filled(np.nan)):
                if not np.isnan(value):
                    ax.text(
                        g,
                        c,
                        f"{value:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if value > 60 else "black",
                    )
        ax.set_title(f"{label}: {record['split']}, epoch {record['epoch']}", fontsize=9)
    fig.colorbar(
        image, ax=list(axes[0]), label=f"% of the class's images with it in their top {top_k}", fraction=0.03
    )
    fig.suptitle(f"{group.title}\n{kind} routing per class (grey: no images of the class)", fontsize=10)
    return save(fig, out / f"{file_stem(kind, 'routing_per_class', group.stem)}.png")
