"""Paper-style tables from an output tree written by the protocol scripts.

    python -m tools.results <output_root> [--csv-dir DIR] [--paper] [--seeds 1 2 3]

Prints Markdown tables (base-to-new, few-shot, cross-dataset, domain
generalisation, missing runs) and writes them as CSV files. Conventions
(docs/PROTOCOLS.md): a run's accuracy is read from the last result block of its
newest log; cells are mean ± sample std over seeds with a 95% t-interval; per
dataset H = 2BN/(B+N) from the mean Base and mean New and the average row's H from
the averaged Base and New (the CoOp-family convention). Unfinished and missing
runs are listed, and rows built from fewer seeds than expected are flagged.
"""

import argparse
import csv
import sys
from pathlib import Path

from tabulate import tabulate

from clipprompt.atomic import WriteError, atomic_file, write_error_message
from tools.protocols import BENCHMARK
from tools.results import paper as published
from tools.results.args import add_curve_argument, add_datasets_argument, add_seeds_argument
from tools.results.base2new import base2new_section
from tools.results.cells import Collector
from tools.results.fewshot import fewshot_grids, fewshot_section, parse_curve
from tools.results.runlog import discover
from tools.results.runreport import runs_section
from tools.results.xd import xd_sections


def build_report(root, declared=(1, 2, 3), paper=None, datasets=BENCHMARK, curves=()):
    """(sections, missing runs) of the output tree at `root`."""
    runs, problems = discover(root)
    if not runs and not problems:
        section = runs_section(root)
        if section is None:
            raise SystemExit(
                f"error: no runs under {root}: neither an output tree (base2new/, fewshot/ or xd/ as the "
                "scripts write them) nor run folders (a log.txt or config.yaml as train.py writes them)"
            )
        return [section], []
    col = Collector(runs)
    col.missing.extend(problems)
    sections = []
    if any(k.protocol == "base2new" for k in runs):
        sections.append(base2new_section(runs, declared, paper, col, datasets))
    grids = fewshot_grids(runs, declared, col, datasets, curves)
    if grids:
        sections.append(fewshot_section(grids, paper))
    sections.extend(xd_sections(runs, declared, paper, col))
    return sections, sorted(col.missing)


def render(root, sections, missing):
    parts = [f"# Results: {root}"]
    for sec in sections:
        parts.append(f"## {sec.heading}\n\n{sec.intro}")
        parts.extend(t.markdown() for t in sec.tables)
    parts.append(f"## Missing or unfinished runs ({len(missing)})")
    if missing:
        parts.append(tabulate(missing, ["Run", "Problem"], tablefmt="github", disable_numparse=True))
    else:
        parts.append("None.")
    return "\n\n".join(parts) + "\n"


def write_csv(path, rows, header=None):
    header = header or list(dict.fromkeys(k for r in rows for k in r))
    with atomic_file(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.results", description=__doc__.split("\n\n")[0])
    p.add_argument("output_root", type=Path, help="an output tree, a run's folder, or any folder of runs")
    p.add_argument(
        "--csv-dir", type=Path, help="where to write the CSV files (default: <output_root>/tables)"
    )
    p.add_argument(
        "--paper", action="store_true", help="add the published numbers of tools/paper_results.json"
    )
    add_seeds_argument(p)
    add_datasets_argument(
        p,
        BENCHMARK,
        "datasets of the base-to-new and few-shot tables and their averages (default: the 11 of the papers)",
    )
    add_curve_argument(p)
    args = p.parse_args(argv)
    if not args.output_root.is_dir():
        p.error(f"{args.output_root} is not a directory")
    declared = args.seeds
    paper = published.load() if args.paper else None
    curves = [parse_curve(c) for c in args.fewshot_curve]
    sections, missing = build_report(args.output_root, declared, paper, args.datasets, curves)
    sys.stdout.write(render(args.output_root, sections, missing))
    csv_dir = args.csv_dir or args.output_root / "tables"
    try:
        for sec in sections:
            if sec.csv_name:
                write_csv(csv_dir / sec.csv_name, sec.csv_rows)
        miss = [{"run": path, "problem": problem} for path, problem in missing]
        write_csv(csv_dir / "missing_runs.csv", miss, header=["run", "problem"])
    except WriteError as err:  # the tables above are printed; --csv-dir can point elsewhere
        raise SystemExit(f"error: {write_error_message(err, 'Or pass --csv-dir')}") from None
    print(f"CSV written to {csv_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
