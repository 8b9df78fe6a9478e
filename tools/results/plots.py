"""Figures of an output tree written by the protocol scripts, or of any folder of runs (PNG).

    python -m tools.plots <output tree, run folder or folder of runs> [--out DIR] [--seeds 1 2 3]

An output tree gets the protocol figures (tools/results/plot_protocols.py: base-to-new bars,
few-shot curves) and, for every trainer/config/dataset with its seeds, the figures of its runs
(tools/results/plot_runs.py: training curves, routing per seed, routing per class). Any other
folder, e.g. one run's `--output-dir` or a folder of seeds, gets the figures of the runs in it.
"""

import argparse
from pathlib import Path

from tools.results.args import add_curve_argument, add_seeds_argument
from tools.results.cells import Collector
from tools.results.fewshot import fewshot_grids, parse_curve
from tools.results.plot_protocols import base2new_figures, fewshot_figures
from tools.results.plot_runs import routing_figures, training_figure
from tools.results.rungroups import folder_groups, tree_groups
from tools.results.runlog import discover


def run_figures(groups, out):
    paths = []
    for group in groups:
        paths += [p for p in [training_figure(group, out)] if p] + routing_figures(group, out)
    return paths


def make_figures(root, out, declared=(1, 2, 3), curves=()):
    """Every figure of the folder `root` (module docstring), written into `out`; their paths."""
    runs, _ = discover(root)
    out.mkdir(parents=True, exist_ok=True)
    if not runs:
        return run_figures(folder_groups(root), out)
    grids = fewshot_grids(runs, list(declared), Collector(runs), curves=curves)
    paths = base2new_figures(runs, list(declared), out) + (fewshot_figures(grids, out) if grids else [])
    return paths + run_figures(tree_groups(runs), out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("output_root", type=Path, help="an output tree, a run's folder, or any folder of runs")
    p.add_argument("--out", type=Path, help="folder for the PNG files (default: <output_root>/plots)")
    add_seeds_argument(p)
    add_curve_argument(p)
    args = p.parse_args(argv)
    if not args.output_root.is_dir():
        p.error(f"{args.output_root} is not a directory")
    curves = [parse_curve(c) for c in args.fewshot_curve]
    out = args.out or args.output_root / "plots"
    try:
        paths = make_figures(args.output_root, out, args.seeds, curves)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if not paths:
        raise SystemExit(
            f"error: nothing to plot under {args.output_root}: no base-to-new or few-shot results, and no "
            "run folder (log.txt, config.yaml) with training epochs or routing statistics"
        )
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
