"""README's demo table, checked against (or written from) the demo's output tree.

    python -m tools.demo.table [--output output/demo] [--readme README.md] [--write]

README.md holds the table between `<!-- demo-table:start -->` and `<!-- demo-table:end -->`, one
row per trainer and config: `| trainer | config | what | Base | New | H |`, each cell the mean ±
sample std over the seeds (H: of the mean Base and New, ± the std of the per-seed H, as
tools.results computes it). Without --write, every row whose runs are complete in the output
tree (train_base and test_new of every seed of --seeds) is compared with what those runs give;
the exit status is 1 when a cell differs, and the differences are printed with the command that
updates README. With --write, those rows' cells are replaced (rows without complete runs keep
their cells, and are listed). scripts/demo.sh runs the check after the demo.
"""

import argparse
import os
import re
import sys

from tools.results.args import add_seeds_argument
from tools.results.cells import cell, fmt, spread
from tools.results.runlog import RunKey, discover
from tools.results.stats import harmonic, summarize

START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
DATASET, SHOTS = "demo_world", 16


def measured(output, seeds):
    """{(trainer, config): [Base, New, H] cells} of every trainer/config whose demo runs are
    complete for `seeds`."""
    runs, _ = discover(output)
    cells = {}
    for key in runs:
        if key.part != "train_base" or key.dataset != DATASET or key.shots != SHOTS:
            continue
        new_key = RunKey("base2new", "test_new", DATASET, SHOTS, key.trainer, key.config)
        base = {s: st.accuracy for s, st in runs[key].items() if st.finished}
        new = {s: st.accuracy for s, st in runs.get(new_key, {}).items() if st.finished}
        if not set(seeds) <= base.keys() & new.keys():
            continue
        b, n = summarize([base[s] for s in seeds]), summarize([new[s] for s in seeds])
        h_seeds = summarize([harmonic(base[s], new[s]) for s in seeds])
        cells[key.trainer, key.config] = [cell(b), cell(n), fmt(harmonic(b.mean, n.mean)) + spread(h_seeds)]
    return cells


def table_rows(text, readme):
    """(line index, cells) of each row between the markers; the header and rule rows excluded."""
    lines = text.splitlines()
    if START not in lines or END not in lines:
        raise SystemExit(f"error: {readme} has no demo table between '{START}' and '{END}'")
    first, last = lines.index(START), lines.index(END)
    rows = []
    for i in range(first + 1, last):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        if len(cells) != 6:
            raise SystemExit(
                f"error: {readme} line {i + 1}: a demo-table row needs 6 cells, not {len(cells)}"
            )
        if cells[0] != "trainer" and not re.fullmatch(r"-+", cells[0]):
            rows.append((i, cells))
    return lines, rows


def compare(rows, cells):
    """(differences, rows not checked): a difference is (trainer, config, column, README, output)."""
    differences, unchecked = [], []
    for _, (trainer, config, _, *readme) in rows:
        if (trainer, config) not in cells:
            unchecked.append(f"{trainer} / {config}")
            continue
        for column, old, new in zip(("Base", "New", "H"), readme, cells[trainer, config]):
            if old != new:
                differences.append((trainer, config, column, old, new))
    return differences, unchecked


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.demo.table", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/demo", help="the demo's output tree (default output/demo)")
    p.add_argument("--readme", default="README.md", help="the file holding the table (default README.md)")
    add_seeds_argument(p, "the seeds of every row")
    p.add_argument("--write", action="store_true", help="replace the rows' cells with the output's")
    args = p.parse_args(argv)
    if not os.path.isdir(args.output):
        p.error(f"--output {args.output} is not a directory: run the demo first (bash scripts/demo.sh)")
    with open(args.readme, encoding="utf-8") as f:
        text = f.read()
    lines, rows = table_rows(text, args.readme)
    cells = measured(args.output, args.seeds)
    differences, unchecked = compare(rows, cells)
    if unchecked:
        print(
            f"Not checked (no complete runs for seeds {' '.join(map(str, args.seeds))} in {args.output}): {', '.join(unchecked)}"
        )
    if args.write:
        for i, (trainer, config, what, *_) in rows:
            if (trainer, config) in cells:
                lines[i] = "| " + " | ".join([trainer, config, what, *cells[trainer, config]]) + " |"
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if text.endswith("\n") else ""))
        print(f"Wrote {len(rows) - len(unchecked)} rows of the demo table in {args.readme}")
        return 0
    if not differences:
        print(f"{args.readme}'s demo table matches {args.output} ({len(rows) - len(unchecked)} rows checked)")
        return 0
    print(f"{args.readme}'s demo table differs from {args.output}:")
    for trainer, config, column, old, new in differences:
        print(f"  {trainer} / {config} {column}: README {old!r}, output {new!r}")
    print(f"Update README with: python -m tools.demo.table --output {args.output} --write")
    return 1


if __name__ == "__main__":
    sys.exit(main())
