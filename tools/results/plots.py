"""Figures from an output tree written by the protocol scripts (PNG, Agg backend).

    python -m tools.plots <output_root> --out DIR [--seeds 1 2 3]

- `base2new_shots<K>.png`: Base, New and H bars per trainer/config, one panel per dataset
  (runs with both a base and a new result) plus their average over the benchmark datasets
  (H of the averaged Base and New, as the tables); mean over seeds, the std as error bar (H:
  of the per-seed H). Hatched bars: fewer seeds than expected.
- `fewshot.png`: few-shot accuracy against shots (1, 2, 4, 8, 16), one panel per
  dataset plus the average over the benchmark datasets, one line per trainer/config,
  mean over seeds (as MoCoOp's Figure 3); `fewshot_average.png`: the average alone.
  Hollow markers: fewer seeds than expected, or an average over fewer datasets.
- `<stats>_<protocol>_<part>_shots<K>_<Trainer>_<config>.png` for every group of
  runs holding `expert_stats.json` (MoCoOp) or `teacher_stats.json` (MoPD): one
  panel per dataset, a bar per expert with its selection share in the last
  epoch's test record (the train record where there is no test record), mean
  over seeds with the std as error bar.
- `<stats>_per_class_<protocol>_<part>_shots<K>_<Trainer>_<config>_<dataset>.png` where those
  files record routing per class (evaluations since per-class records exist): the share of
  each expert or teacher among each class's top-k selections in the last evaluation, mean
  over seeds.

An average panel says over how many datasets it averages: "Average over 11 datasets" when
every point averages all of them with every seed, else the range of counts, "over 9–11 of 11".
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tools.protocols import BENCHMARK
from tools.results.args import add_curve_argument, add_seeds_argument
from tools.results.cells import Average, Collector, by_seed, display_name, expected_seeds, groups, ordered
from tools.results.fewshot import fewshot_grids, parse_curve
from tools.results.runlog import RunKey, discover
from tools.results.stats import harmonic, summarize

STATS_FILES = ("expert_stats.json", "teacher_stats.json")
NCOLS = 4


def _panel_grid(n):
    nrows = -(-n // NCOLS)
    fig, axes = plt.subplots(nrows, NCOLS, figsize=(4 * NCOLS, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _curve(ax, label, points):
    """points: [(shots, accuracy, complete)]; incomplete points get hollow markers."""
    if not points:
        return
    xs, ys, _ = zip(*points)
    (line,) = ax.plot(xs, ys, "-", label=label)
    for x, y, ok in points:
        ax.plot(x, y, "o", color=line.get_color(), markerfacecolor=line.get_color() if ok else "white")


def _shots_axis(ax, title, shots):
    ax.set_title(title)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


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


def _average_panel(ax, grids, shots):
    plotted = []
    for g in grids:
        points = []
        for k in g.shots:
            avg = g.average(k)
            if avg:
                points.append((k, avg.mean, avg.full))
                plotted.append(avg)
        _curve(ax, f"{g.trainer} / {g.config}", points)
    _shots_axis(ax, average_title(plotted), shots)
    ax.legend(fontsize=8)


def fewshot_figures(grids, out):
    shots = sorted({k for g in grids for k in g.shots})
    datasets = ordered(BENCHMARK, {d for g in grids for d in g.datasets})
    fig, axes = _panel_grid(1 + len(datasets))
    _average_panel(axes[0], grids, shots)
    for ax, d in zip(axes[1:], datasets):
        for g in grids:
            points = [(k, g.cells[d, k].mean, g.complete(d, k)) for k in g.shots if (d, k) in g.cells]
            _curve(ax, f"{g.trainer} / {g.config}", points)
        _shots_axis(ax, display_name(d), shots)
    fig.tight_layout()
    paths = [out / "fewshot.png", out / "fewshot_average.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    _average_panel(ax, grids, shots)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def read_selection(path):
    """(expert names, selection shares, split, epoch) of the last epoch's test
    record of a stats file, or of its last train record when it has no test one."""
    stats = json.loads(Path(path).read_text())
    names = stats.get("names")
    for split in ("test", "train"):
        records = [r for r in stats.get("records", []) if r.get("split") == split]
        if records:
            rec = max(records, key=lambda r: r["epoch"])
            if not names or len(rec["selection_share"]) != len(names):
                raise ValueError(
                    f"{path}: selection_share of epoch {rec['epoch']} does not match names {names}"
                )
            return names, rec["selection_share"], split, rec["epoch"]
    raise ValueError(f"{path}: no train or test record")


def expert_figures(runs, out):
    groups = {}  # (stats stem, protocol, part, shots, trainer, config) -> {dataset: [selection]}
    for key, seeds in runs.items():
        for seed in sorted(seeds):
            for fname in STATS_FILES:
                path = seeds[seed].path / fname
                if path.is_file():
                    group = (Path(fname).stem, key.protocol, key.part, key.shots, key.trainer, key.config)
                    groups.setdefault(group, {}).setdefault(key.dataset, []).append(
                        (path, read_selection(path))
                    )
    paths = []
    for (stem, protocol, part, shots, trainer, config), per_dataset in sorted(groups.items()):
        datasets = ordered(BENCHMARK, per_dataset)
        fig, axes = _panel_grid(len(datasets))
        for ax, d in zip(axes, datasets):
            selections = per_dataset[d]
            names = selections[0][1][0]
            for path, (other, *_) in selections:
                if other != names:
                    raise ValueError(f"{path}: expert names {other} differ from {selections[0][0]}: {names}")
            columns = list(zip(*(sel[1] for _, sel in selections)))
            means = [statistics.fmean(c) for c in columns]
            errs = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
            ax.bar(range(len(names)), means, yerr=errs, capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            where = sorted({f"{split} epoch {epoch}" for _, (_, _, split, epoch) in selections})
            ax.set_title(f"{display_name(d)} ({', '.join(where)}; {len(selections)} seeds)", fontsize=9)
            ax.set_ylabel("selection share")
        fig.suptitle(
            f"{trainer} / {config}: {stem.replace('_', ' ')}, {protocol} {part} {shots} shots".replace(
                "  ", " "
            )
        )
        fig.tight_layout()
        name = "_".join(x for x in (stem, protocol, part, f"shots{shots}", trainer, config) if x) + ".png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)
    return paths


PARTS = ("Base", "New", "H")


def _accuracies(runs, key):
    return {s: st.accuracy for s, st in runs.get(key, {}).items() if st.finished}


def base2new_results(runs, declared):
    """{shots: {"Trainer / config": {dataset: ([Base, New, H], [their stds], complete)}}} of the
    datasets with a base and a new result; H is that of the mean Base and New, its std that
    of the per-seed H (as the tables)."""
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
    return results


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
    """Base, New and H on the x axis, a bar per trainer/config (`colours`: {label: colour}) with
    its std (`stds` None: no error bars); hatched where seeds are missing."""
    for i, (label, colour) in enumerate(colours.items()):
        if label not in values:
            continue
        xs = [j + (i - (len(colours) - 1) / 2) * 0.8 / len(colours) for j in range(len(PARTS))]
        yerr = stds[label] if stds else None
        hatch = "" if complete[label] else "///"
        ax.bar(
            xs,
            values[label],
            0.8 / len(colours),
            yerr=yerr,
            capsize=2,
            color=colour,
            hatch=hatch,
            label=label,
        )
    tops = [v + (stds[g][j] if stds else 0) for g, row in values.items() for j, v in enumerate(row)]
    low = min(v for row in values.values() for v in row)
    ax.set_ylim(max(0, 10 * (low // 10) - 10), min(100, max(tops) + 3))
    ax.set_xticks(range(len(PARTS)), PARTS)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)


def base2new_figures(runs, declared, out):
    paths = []
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for shots, per_group in sorted(base2new_results(runs, declared).items()):
        colours = {g: cycle[i % len(cycle)] for i, g in enumerate(per_group)}
        datasets = ordered(BENCHMARK, {d for cells in per_group.values() for d in cells})
        averages = {g: avg for g, cells in per_group.items() if (avg := _benchmark_average(cells))}
        fig, axes = _panel_grid(len(datasets) + bool(averages))
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
        fig.legend(handles, list(colours), loc="upper right", ncol=min(4, len(colours)), fontsize=9)
        fig.suptitle(
            f"Base-to-new, {shots} shots: mean over seeds, std as error bar, hatched: seeds missing",
            x=0.01,
            ha="left",
        )
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        path = out / f"base2new_shots{shots}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def read_per_class(path):
    """(candidate names, class names, shares [C][G] or None per class, split, epoch) of the last
    evaluation record of a stats file that has per-class routing (test before val), or None."""
    stats = json.loads(Path(path).read_text())
    records = [r for r in stats.get("records", []) if r.get("per_class")]
    if not records:
        return None
    rec = max(records, key=lambda r: (r["split"] == "test", r["epoch"]))
    names, classnames = stats.get("names") or [], stats.get("classnames") or []
    shares = rec["per_class"]["selection_share"]
    if len(shares) != len(classnames) or any(row is not None and len(row) != len(names) for row in shares):
        raise ValueError(
            f"{path}: per-class shares of epoch {rec['epoch']} do not match its {len(classnames)} classes "
            f"and {len(names)} names"
        )
    return names, classnames, shares, rec["split"], rec["epoch"]


def _seed_mean(tables):
    """Per class and candidate, the mean over seeds of the shares that exist (None: no seed)."""
    means = []
    for rows in zip(*tables):
        present = [row for row in rows if row is not None]
        means.append([statistics.fmean(col) for col in zip(*present)] if present else None)
    return means


def per_class_figure(title, names, classnames, shares, path):
    """A heatmap: a row per class, a column per expert or teacher, the share of its selections."""
    import numpy as np

    grid = np.ma.masked_invalid([[np.nan] * len(names) if row is None else row for row in shares])
    height = min(60, 2.2 + 0.22 * len(classnames) + 0.05 * max(map(len, names)))
    width = min(30, max(7.0, 2.5 + 0.55 * len(names) + 0.07 * max(map(len, classnames))))
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("Blues").with_extremes(bad="0.85")  # grey: a class without images
    top = float(grid.max()) if grid.count() else 1.0
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=top)
    step = max(1, len(classnames) // 80)  # at most ~80 class labels
    ax.set_yticks(range(0, len(classnames), step), classnames[::step], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    for c, row in enumerate(shares):
        if row is None:  # named once, in the middle of its grey row
            ax.text((len(names) - 1) / 2, c, "no images", ha="center", va="center", fontsize=7, color="0.3")
        elif grid.size <= 300:
            for g, value in enumerate(row):
                colour = "white" if value > 0.6 * top else "black"
                ax.text(g, c, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="share of the class's top-k selections", fraction=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_class_figures(runs, out):
    found = {}  # (stem, protocol, part, shots, trainer, config, dataset) -> [(path, per-class)]
    for key, seeds in runs.items():
        for seed in sorted(seeds):
            for fname in STATS_FILES:
                path = seeds[seed].path / fname
                per_class = read_per_class(path) if path.is_file() else None
                if per_class is not None:
                    found.setdefault(
                        (Path(fname).stem, *key[:2], key.shots, key.trainer, key.config, key.dataset), []
                    ).append((path, per_class))
    paths = []
    for (stem, protocol, part, shots, trainer, config, dataset), seeds in sorted(found.items()):
        names, classnames = seeds[0][1][:2]
        for path, (other_names, other_classes, *_) in seeds:
            if (other_names, other_classes) != (names, classnames):
                raise ValueError(f"{path}: its candidates or classes differ from those of {seeds[0][0]}")
        where = ", ".join(sorted({f"{split} epoch {epoch}" for _, (*_, split, epoch) in seeds}))
        title = (
            f"{trainer} / {config} on {display_name(dataset)}: {stem.split('_')[0]} share per class\n"
            f"{protocol} {part}, {shots} shots, {where}, mean over {len(seeds)} seed{'s' * (len(seeds) > 1)}"
        )
        name = "_".join(
            x for x in (stem, "per_class", protocol, part, f"shots{shots}", trainer, config, dataset) if x
        )
        per_class_figure(
            title.replace("  ", " "),
            names,
            classnames,
            _seed_mean([s[1][2] for s in seeds]),
            out / f"{name}.png",
        )
        paths.append(out / f"{name}.png")
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    add_seeds_argument(p)
    add_curve_argument(p)
    args = p.parse_args(argv)
    if not args.output_root.is_dir():
        p.error(f"{args.output_root} is not a directory")
    runs, _ = discover(args.output_root)
    args.out.mkdir(parents=True, exist_ok=True)
    curves = [parse_curve(c) for c in args.fewshot_curve]
    declared = args.seeds
    grids = fewshot_grids(runs, declared, Collector(runs), curves=curves)
    paths = base2new_figures(runs, declared, args.out)
    paths += (fewshot_figures(grids, args.out) if grids else []) + expert_figures(runs, args.out)
    paths += per_class_figures(runs, args.out)
    if not paths:
        raise SystemExit(
            f"error: nothing to plot under {args.output_root} (no base-to-new or few-shot results, "
            "no expert or teacher statistics)"
        )
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
