"""Figures from an output tree written by the protocol scripts (PNG, Agg backend).

    python -m tools.plots <output_root> --out DIR [--seeds "1 2 3"]

- `fewshot.png`: few-shot accuracy against shots (1, 2, 4, 8, 16), one panel per
  dataset plus the average over the 11 datasets, one line per trainer/config,
  mean over seeds (as MoCoOp's Figure 3); `fewshot_average.png`: the average alone.
  Hollow markers: fewer seeds than expected, or an average over fewer than 11 datasets.
- `<stats>_<protocol>_<part>_shots<K>_<Trainer>_<config>.png` for every group of
  runs holding `expert_stats.json` (MoCoOp) or `teacher_stats.json` (MoPD): one
  panel per dataset, a bar per expert with its selection share in the last
  epoch's test record (the train record where there is no test record), mean
  over seeds with the std as error bar.
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tools.protocols import BENCHMARK
from tools.results.cells import Collector, display_name, ordered
from tools.results.fewshot import fewshot_grids, parse_curve
from tools.results.report import add_curve_argument
from tools.results.runlog import discover

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


def _average_panel(ax, grids, shots):
    for g in grids:
        points = []
        for k in g.shots:
            avg = g.average(k)
            if avg:
                points.append((k, avg.mean, avg.full))
        _curve(ax, f"{g.trainer} / {g.config}", points)
    _shots_axis(ax, f"Average over {len(BENCHMARK)} datasets", shots)
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    p.add_argument("--seeds", default="1 2 3", help='seeds every group should have (default "1 2 3")')
    add_curve_argument(p)
    args = p.parse_args(argv)
    if not args.output_root.is_dir():
        p.error(f"{args.output_root} is not a directory")
    runs, _ = discover(args.output_root)
    args.out.mkdir(parents=True, exist_ok=True)
    curves = [parse_curve(c) for c in args.fewshot_curve]
    grids = fewshot_grids(runs, [int(s) for s in args.seeds.split()], Collector(runs), curves=curves)
    paths = (fewshot_figures(grids, args.out) if grids else []) + expert_figures(runs, args.out)
    if not paths:
        raise SystemExit(
            f"error: nothing to plot under {args.output_root} (no few-shot runs, no expert statistics)"
        )
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
