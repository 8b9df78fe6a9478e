"""The protocol figures of an output tree: base-to-new bars and few-shot curves (tools.plots).

- `base2new_shots<K>.png`: a panel per dataset (runs with a base and a new result), plus the
  average over the benchmark datasets when any is present (H of the averaged Base and New, as the
  tables); Base, New and H on the x axis, a bar per trainer/config with its value written on it,
  zero-shot CLIP first; mean over seeds, the std as error bar (H: of the per-seed H); hatched bars
  have fewer seeds than expected. The y axis starts at 0.
- `fewshot.png`: accuracy against shots (1, 2, 4, 8, 16), a panel per dataset plus the average
  over the benchmark datasets, a line per trainer/config, mean over seeds (as MoCoOp's Figure 3);
  `fewshot_average.png`: the average alone. Hollow markers: fewer seeds than expected, or an
  average over fewer datasets.

An average panel says over how many datasets it averages: "Average over 11 datasets" when every
point averages all of them with every seed, else the range of counts, "over 9–11 of 11".
"""

import statistics

from tools.protocols import BENCHMARK
from tools.results.cells import Average, by_seed, display_name, expected_seeds, groups, ordered
from tools.results.figures import label_bars, legend_below, method_colours, method_key, panel_grid, plt, save
from tools.results.runlog import RunKey
from tools.results.stats import harmonic, summarize

PARTS = ("Base", "New", "H")


def average_title(averages):
    """The title of an average panel from its points' `Average`s (module docstring)."""
    if not averages:
        return "Average: no dataset has results"
    total = max(a.total for a in averages)
    if all(a.full for a in averages):
        return f"Average over {total} datasets"
    lo, hi = min(a.count for a in averages), max(a.count for a in averages)
    span = str(lo) if lo == hi else f"{lo}–{hi}"
    return f"Average over {span} of {total} datasets"


def _accuracies(runs, key):
    return {s: st.accuracy for s, st in runs.get(key, {}).items() if st.finished}


def base2new_results(runs, declared):
    """{shots: {"Trainer / config": {dataset: ([Base, New, H], [their stds], complete)}}} of the
    datasets with a base and a new result, methods in figure order (zero-shot CLIP first); H is
    that of the mean Base and New, its std that of the per-seed H (as the tables)."""
    results = {}
    for (trainer, config, shots), keys in groups(runs, "base2new", ("trainer", "config", "shots")).items():
        expected = expected_seeds(runs, keys, declared)
        per_dataset = {}
        for d in sorted({k.dataset for k in keys}):
            key = RunKey("base2new", "train_base", d, shots, trainer, config)
            base, new = _accuracies(runs, key), _accuracies(runs, key._replace(part="test_new"))
            if not (base and new):
                continue
            b, n = by_seed(base), by_seed(new)
            h = summarize([harmonic(base[s], new[s]) for s in sorted(base.keys() & new.keys())])
            stds = [(s.std or 0.0) if s else 0.0 for s in (b, n, h)]
            complete = expected <= base.keys() and expected <= new.keys()
            per_dataset[d] = ([b.mean, n.mean, harmonic(b.mean, n.mean)], stds, complete)
        if per_dataset:
            results.setdefault(shots, {})[f"{trainer} / {config}"] = per_dataset
    return {k: dict(sorted(v.items(), key=lambda item: method_key(item[0]))) for k, v in results.items()}


def _benchmark_average(per_dataset):
    """([Base, New, H], Average) over the benchmark datasets in `per_dataset`, or None."""
    cells = [per_dataset[d] for d in BENCHMARK if d in per_dataset]
    if not cells:
        return None
    base = statistics.fmean(c[0][0] for c in cells)
    new = statistics.fmean(c[0][1] for c in cells)
    return [base, new, harmonic(base, new)], Average(
        base, len(cells), len(BENCHMARK), all(c[2] for c in cells)
    )


def _bars(ax, colours, values, stds, complete):
    """Base, New and H on the x axis, a bar per trainer/config (`colours`: {label: colour}, in
    order) with its std (`stds` None: no error bars) and its value; hatched where seeds are
    missing. The y axis runs from 0 to 100."""
    present = [label for label in colours if label in values]
    width = 0.84 / len(present)
    ax.set_ylim(0, 100)
    for i, label in enumerate(present):
        xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(PARTS))]
        bars = ax.bar(
            xs,
            values[label],
            width,
            yerr=stds[label] if stds else None,
            capsize=2,
            error_kw={"elinewidth": 0.8},
            color=colours[label],
            hatch="" if complete[label] else "///",
            label=label,
        )
        label_bars(ax, bars, values[label])
    ax.set_xticks(range(len(PARTS)), PARTS)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def base2new_figures(runs, declared, out):
    paths = []
    for shots, per_group in sorted(base2new_results(runs, declared).items()):
        colours = method_colours(per_group)
        datasets = ordered(BENCHMARK, {d for cells in per_group.values() for d in cells})
        averages = {g: avg for g, cells in per_group.items() if (avg := _benchmark_average(cells))}
        # Panels widen with their bars, so that each value stays readable.
        fig, axes = panel_grid(
            len(datasets) + bool(averages), ncols=3 if len(colours) <= 4 else 2, width=2 + 0.75 * len(colours)
        )
        if averages:
            ax = axes.pop(0)
            full = {g: avg.full for g, (_, avg) in averages.items()}
            _bars(ax, colours, {g: v for g, (v, _) in averages.items()}, None, full)
            ax.set_title(average_title([avg for _, avg in averages.values()]))
        for ax, d in zip(axes, datasets):
            cells = {g: per_group[g][d] for g in per_group if d in per_group[g]}
            values, stds = {g: c[0] for g, c in cells.items()}, {g: c[1] for g, c in cells.items()}
            _bars(ax, colours, values, stds, {g: c[2] for g, c in cells.items()})
            ax.set_title(display_name(d))
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        legend_below(fig, handles, list(colours), ncol=3)
        fig.suptitle(
            f"Base-to-new, {shots} shots: mean over seeds, std as error bar"
            + (
                ""
                if all(c[2] for g in per_group.values() for c in g.values())
                else "; hatched: seeds missing"
            ),
            fontsize=11,
        )
        fig.tight_layout()
        paths.append(save(fig, out / f"base2new_shots{shots}.png"))
    return paths


def _curve(ax, label, points, colour):
    """points: [(shots, accuracy, complete)]; incomplete points get hollow markers."""
    if not points:
        return
    xs, ys, _ = zip(*points)
    ax.plot(xs, ys, "-", label=label, color=colour)
    for x, y, ok in points:
        ax.plot(x, y, "o", color=colour, markerfacecolor=colour if ok else "white")


def _shots_axis(ax, title, shots):
    ax.set_title(title)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def _average_panel(ax, grids, shots, colours):
    plotted = []
    for g in grids:
        points = []
        for k in g.shots:
            avg = g.average(k)
            if avg:
                points.append((k, avg.mean, avg.full))
                plotted.append(avg)
        _curve(ax, f"{g.trainer} / {g.config}", points, colours[f"{g.trainer} / {g.config}"])
    _shots_axis(ax, average_title(plotted), shots)


def fewshot_figures(grids, out):
    grids = sorted(grids, key=lambda g: method_key(f"{g.trainer} / {g.config}"))
    colours = method_colours(f"{g.trainer} / {g.config}" for g in grids)
    shots = sorted({k for g in grids for k in g.shots})
    datasets = ordered(BENCHMARK, {d for g in grids for d in g.datasets})
    handles = [plt.Line2D([], [], color=c, marker="o") for c in colours.values()]
    fig, axes = panel_grid(1 + len(datasets), ncols=4)
    _average_panel(axes[0], grids, shots, colours)
    for ax, d in zip(axes[1:], datasets):
        for g in grids:
            points = [(k, g.cells[d, k].mean, g.complete(d, k)) for k in g.shots if (d, k) in g.cells]
            _curve(ax, f"{g.trainer} / {g.config}", points, colours[f"{g.trainer} / {g.config}"])
        _shots_axis(ax, display_name(d), shots)
    legend_below(fig, handles, list(colours), ncol=4)
    fig.suptitle("Few-shot accuracy, mean over seeds; hollow marker: seeds or datasets missing", fontsize=11)
    fig.tight_layout()
    paths = [save(fig, out / "fewshot.png")]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    _average_panel(ax, grids, shots, colours)
    legend_below(fig, handles, list(colours), ncol=2)
    fig.tight_layout()
    paths.append(save(fig, out / "fewshot_average.png"))
    return paths
