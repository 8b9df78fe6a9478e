"""Paper-style tables from an output tree written by the protocol scripts.

    python -m tools.results <output_root> [--csv-dir DIR] [--paper] [--seeds "1 2 3"]

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
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from tools._runlog import RunKey, discover

DISPLAY = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "OxfordFlowers",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNetV2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}
BENCHMARK = list(DISPLAY)[:11]
XD_SOURCE = "imagenet"
XD_TARGETS = BENCHMARK[1:]
DG_TARGETS = list(DISPLAY)[11:]

PAPER_FILE = Path(__file__).with_name("paper_results.json")
PAPER_TABLE = "mocoop_table1_base_to_new"
PAPER_METHOD = {"ZeroshotCLIP": "CLIP"}  # the other trainers carry the paper's names
# Printed cells have two decimals, so a recomputed value within this of the
# printed one is rounding; anything further is a garbled or inconsistent cell.
PAPER_TOLERANCE = 0.015

# Two-sided 95% Student t quantiles t_{0.975}(df); between rows the table is
# interpolated linearly in 1/df, the usual rule for printed t tables.
_T975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646,
    8: 2.3060, 9: 2.2622, 10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448,
    15: 2.1314, 16: 2.1199, 17: 2.1098, 18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796,
    22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518, 28: 2.0484,
    29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799, math.inf: 1.9600,
}


def t975(df):
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    lo = max(k for k in _T975 if k < df)
    hi = min(k for k in _T975 if k > df)
    inv = lambda k: 0.0 if k == math.inf else 1.0 / k  # noqa: E731
    frac = (inv(df) - inv(hi)) / (inv(lo) - inv(hi))
    return _T975[hi] + frac * (_T975[lo] - _T975[hi])


def harmonic(base, new):
    return 2 * base * new / (base + new) if base + new else 0.0


@dataclass(frozen=True)
class Summary:
    """Values over seeds: mean, sample std (n - 1) and the 95% t-interval of the mean."""

    values: tuple

    @property
    def n(self):
        return len(self.values)

    @property
    def mean(self):
        return statistics.fmean(self.values)

    @property
    def std(self):
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def ci(self):
        if self.n < 2:
            return None
        half = t975(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def summarize(values):
    return Summary(tuple(values)) if values else None


def _f(x):
    return "" if x is None else f"{x:.2f}"


def _spread(s, ci=False):
    """` ± std [lo, hi]`, empty when n = 1 cannot give them."""
    if s is None or s.std is None:
        return ""
    text = f" ± {_f(s.std)}"
    if ci:
        lo, hi = s.ci
        text += f" [{_f(lo)}, {_f(hi)}]"
    return text


def _cell(s, ci=False):
    return "—" if s is None else _f(s.mean) + _spread(s, ci)


def _marked(s, complete):
    """A cell with ` !` when it has fewer seeds than expected."""
    return _cell(s) + ("" if s is None or complete else " !")


def _average(cells):
    """(mean of the means, how many cells have one, all of those complete) over
    [(Summary or None, complete)], or None when none has a mean."""
    have = [(s, c) for s, c in cells if s is not None]
    if not have:
        return None
    return statistics.fmean(s.mean for s, _ in have), len(have), all(c for _, c in have)


def _average_cell(avg, total):
    """`mean (k/total) !` for an `_average` result."""
    if avg is None:
        return "—"
    mean, count, complete = avg
    return _f(mean) + (f" ({count}/{total})" if count < total else "") + ("" if complete else " !")


def _stats_csv(prefix, s):
    lo, hi = s.ci if s and s.ci else (None, None)
    return {
        f"{prefix}n": s.n if s else 0,
        f"{prefix}mean": _f(s.mean) if s else "",
        f"{prefix}std": _f(s.std) if s else "",
        f"{prefix}ci95_low": _f(lo),
        f"{prefix}ci95_high": _f(hi),
    }


def _seeds(seeds):
    return ",".join(str(s) for s in sorted(seeds))


def _name(dataset):
    return DISPLAY.get(dataset, dataset)


def _ordered(known, found):
    """`known` order first, then any other found names alphabetically."""
    return [d for d in known if d in found] + sorted(set(found) - set(known))


@dataclass
class Table:
    title: str
    headers: list
    rows: list
    notes: list = field(default_factory=list)

    def markdown(self):
        text = f"### {self.title}\n\n" + tabulate(
            self.rows, self.headers, tablefmt="github", disable_numparse=True
        )
        return text + "".join(f"\n\n{n}" for n in self.notes)


@dataclass
class Section:
    heading: str
    intro: str
    tables: list
    csv_name: str
    csv_rows: list


class Collector:
    """Finished accuracies per seed, and a missing-runs entry for every expected
    seed without one."""

    def __init__(self, runs):
        self.runs = runs
        self.missing = []  # (relative path, problem)

    def accuracies(self, key, expected, note_if=lambda seed: None):
        """{seed: accuracy} of `key`'s finished runs. Records what is missing;
        `note_if(seed)` (seed None: the whole key) may add to the problem."""
        states = self.runs.get(key, {})
        if not states:
            self.report(key.path("*"), "no runs", note_if(None))
            return {}
        acc = {s: st.accuracy for s, st in states.items() if st.finished}
        for s in sorted(expected - acc.keys()):
            self.report(key.path(s), states[s].problem() if s in states else "no run directory", note_if(s))
        return acc

    def report(self, path, problem, note=None):
        self.missing.append((path, f"{problem}; {note}" if note else problem))


def _groups(runs, protocol, fields):
    groups = {}
    for key in runs:
        if key.protocol == protocol:
            groups.setdefault(tuple(getattr(key, f) for f in fields), []).append(key)
    return dict(sorted(groups.items()))


def _expected(runs, keys, declared):
    """Seeds a group should have: the declared ones and any seed run anywhere in it."""
    return set(declared) | {s for k in keys for s in runs[k]}


# ---------------------------------------------------------------- base-to-new


def load_paper(path=PAPER_FILE):
    with open(path) as f:
        return json.load(f)[PAPER_TABLE]


def paper_cells(table, method):
    """{display name | "Average": {"base"|"new"|"H": (value, printed or None)}} for
    `method`: H recomputed from the printed Base/New, Average from the 11 printed
    rows; `printed` is set where the printed value differs beyond rounding."""

    def cells(values, printed):
        return {
            k: (v, printed[k] if printed and abs(v - printed[k]) > PAPER_TOLERANCE else None)
            for k, v in values.items()
        }

    out = {}
    for name, methods in table.items():
        if name != "Average" and method in methods:
            b, n = methods[method]["base"], methods[method]["new"]
            out[name] = cells({"base": b, "new": n, "H": harmonic(b, n)}, methods[method])
    rows = [out[_name(d)] for d in BENCHMARK if _name(d) in out]
    if len(rows) == len(BENCHMARK):
        b = statistics.fmean(r["base"][0] for r in rows)
        n = statistics.fmean(r["new"][0] for r in rows)
        out["Average"] = cells({"base": b, "new": n, "H": harmonic(b, n)}, table.get("Average", {}).get(method))
    return out


def _paper_note(method, cells):
    differs = [
        f"{name} {k} {printed:.2f}"
        for name, row in cells.items()
        for k, (_, printed) in row.items()
        if printed is not None
    ]
    note = (
        f"Paper: MoCoOp paper Table 1, method {method} (tools/paper_results.json). Some printed "
        "cells are garbled (see the file's `_about`), so Paper H is recomputed as 2BN/(B+N) from "
        "the printed Base and New, and Paper Average is the mean of the 11 printed dataset rows."
    )
    if differs:
        note += " † differs from the printed value, which is: " + "; ".join(differs) + "."
    return note


def base2new_section(runs, declared, paper, col):
    intro = (
        "Cells: mean ± sample std over seeds [95% t-interval of the mean]. H = 2·B·N/(B+N) of the "
        "mean Base and mean New (the CoOp-family convention); its ± and interval are those of "
        "the per-seed H (Base and New of the same seed). Average: mean over the 11 datasets of "
        "the per-dataset means, its H from the averaged Base and New."
    )
    tables, csv_rows = [], []
    for (trainer, config, shots), keys in _groups(runs, "base2new", ("trainer", "config", "shots")).items():
        expected = _expected(runs, keys, declared)
        method = PAPER_METHOD.get(trainer, trainer)
        pub = paper_cells(paper, method) if paper is not None else None
        if pub == {}:
            pub = None
        headers = ["Dataset", "Seeds", "Base", "New", "H"]
        if pub:
            headers += ["Paper Base", "Paper New", "Paper H"]
        headers.append("Flags")
        rows, averaged = [], []
        for d in _ordered(BENCHMARK, set(BENCHMARK) | {k.dataset for k in keys}):
            bkey = RunKey("base2new", "train_base", d, shots, trainer, config)
            nkey = bkey._replace(part="test_new")
            if bkey not in runs and nkey not in runs:
                col.report(f"base2new/*/{d}/shots_{shots}/{trainer}/{config}/seed*", "no runs for this dataset")
                continue
            new = col.accuracies(nkey, expected)
            base = col.accuracies(
                bkey,
                expected,
                lambda s: "test_new has a result without it (new without base)"
                if (s is None and new) or s in new
                else None,
            )
            flags = []
            if expected - base.keys():
                flags.append(f"base missing seeds {_seeds(expected - base.keys())}")
            if expected - new.keys():
                flags.append(f"new missing seeds {_seeds(expected - new.keys())}")
            if new.keys() - base.keys():
                flags.append(f"new without base: seeds {_seeds(new.keys() - base.keys())}")
            b, n = summarize([base[s] for s in sorted(base)]), summarize([new[s] for s in sorted(new)])
            h = harmonic(b.mean, n.mean) if b and n else None
            h_seeds = summarize([harmonic(base[s], new[s]) for s in sorted(base.keys() & new.keys())])
            if d in BENCHMARK and b and n:
                averaged.append((d, b.mean, n.mean, bool(flags)))
            seeds = _seeds(base) if base.keys() == new.keys() else f"base {_seeds(base)}; new {_seeds(new)}"
            h_cell = "—" if h is None else _f(h) + _spread(h_seeds, ci=True)
            row = [_name(d), seeds, _cell(b, ci=True), _cell(n, ci=True), h_cell]
            record = {"trainer": trainer, "config": config, "shots": shots, "dataset": _name(d)}
            record |= {"base_seeds": _seeds(base)} | _stats_csv("base_", b)
            record |= {"new_seeds": _seeds(new)} | _stats_csv("new_", n)
            record |= {"H": _f(h)} | _stats_csv("H_seed_", h_seeds)
            if pub:
                row += _paper_row(pub.get(_name(d)), record)
            row.append("; ".join(flags))
            record["flags"] = "; ".join(flags)
            rows.append(row)
            csv_rows.append(record)
        if averaged:
            avg_b = statistics.fmean(a[1] for a in averaged)
            avg_n = statistics.fmean(a[2] for a in averaged)
            avg_h = harmonic(avg_b, avg_n)
            flags = []
            absent = [_name(d) for d in BENCHMARK if d not in {a[0] for a in averaged}]
            if absent:
                flags.append(f"over {len(averaged)}/{len(BENCHMARK)} datasets, without {', '.join(absent)}")
            if any(a[3] for a in averaged):
                flags.append("includes flagged datasets")
            row = ["Average", "", _f(avg_b), _f(avg_n), _f(avg_h)]
            record = {"trainer": trainer, "config": config, "shots": shots, "dataset": "Average"}
            record |= {"datasets": len(averaged), "base_mean": _f(avg_b), "new_mean": _f(avg_n), "H": _f(avg_h)}
            if pub:
                row += _paper_row(pub.get("Average"), record)
            row.append("; ".join(flags))
            record["flags"] = "; ".join(flags)
            rows.append(row)
            csv_rows.append(record)
        notes = []
        if paper is not None:
            notes.append(_paper_note(method, pub) if pub else f"Paper: no published numbers for {trainer}.")
        tables.append(Table(f"{trainer} / {config} ({shots} shots)", headers, rows, notes))
    return Section("Base-to-new generalisation", intro, tables, "base2new.csv", csv_rows)


def _paper_row(cells, record):
    """Paper Base/New/H cells (and CSV fields) of one row; † marks recomputed cells."""
    out = []
    for k in ("base", "new", "H"):
        value, printed = cells[k] if cells else (None, None)
        record[f"paper_{k}"] = _f(value)
        record[f"paper_{k}_printed"] = _f(printed)
        out.append("—" if value is None else _f(value) + ("†" if printed is not None else ""))
    return out


# ------------------------------------------------------------------- few-shot


@dataclass
class FewShotGrid:
    """Few-shot results of one trainer/config: a Summary per (dataset, shots)."""

    trainer: str
    config: str
    shots: list
    datasets: list
    cells: dict  # (dataset, shots) -> Summary
    expected_n: int

    def complete(self, dataset, k):
        s = self.cells.get((dataset, k))
        return s is not None and s.n == self.expected_n

    def average(self, k):
        """`_average` of the `k`-shot cells of the 11 benchmark datasets."""
        return _average([(self.cells.get((d, k)), self.complete(d, k)) for d in BENCHMARK])


def fewshot_grids(runs, declared, col):
    grids = []
    for (trainer, config), keys in _groups(runs, "fewshot", ("trainer", "config")).items():
        expected = _expected(runs, keys, declared)
        shots = sorted({k.shots for k in keys})
        datasets = _ordered(BENCHMARK, {k.dataset for k in keys})
        for d in BENCHMARK:
            if d not in datasets:
                col.report(f"fewshot/{d}/shots_*/{trainer}/{config}/seed*", "no runs for this dataset")
        cells = {}
        for d in datasets:
            for k in shots:
                acc = col.accuracies(RunKey("fewshot", "", d, k, trainer, config), expected)
                if acc:
                    cells[d, k] = summarize([acc[s] for s in sorted(acc)])
        grids.append(FewShotGrid(trainer, config, shots, datasets, cells, len(expected)))
    return grids


def fewshot_section(grids):
    intro = (
        "Cells: mean ± sample std over seeds (95% t-intervals in the CSV); ! = fewer seeds than "
        "expected (see the missing runs). Average: mean over the 11 datasets, with (k/11) when "
        "only k of them have that shot count and ! when any averaged cell has fewer seeds than expected."
    )
    tables, csv_rows = [], []
    for g in grids:
        headers = ["Dataset"] + [f"{k} shot" + ("s" if k > 1 else "") for k in g.shots]
        rows = []
        for d in g.datasets:
            row = [_name(d)]
            for k in g.shots:
                s = g.cells.get((d, k))
                row.append(_marked(s, g.complete(d, k)))
                record = {"trainer": g.trainer, "config": g.config, "dataset": _name(d), "shots": k}
                record |= _stats_csv("", s) | {"expected_n": g.expected_n, "complete": g.complete(d, k)}
                csv_rows.append(record)
            rows.append(row)
        avg_row = ["Average"]
        for k in g.shots:
            avg = g.average(k)
            avg_row.append(_average_cell(avg, len(BENCHMARK)))
            if avg:
                csv_rows.append(
                    {"trainer": g.trainer, "config": g.config, "dataset": "Average", "shots": k}
                    | {"n": avg[1], "mean": _f(avg[0]), "expected_n": len(BENCHMARK)}
                    | {"complete": avg[1] == len(BENCHMARK) and avg[2]}
                )
        rows.append(avg_row)
        tables.append(Table(f"{g.trainer} / {g.config}", headers, rows))
    return Section("Few-shot learning (all classes)", intro, tables, "fewshot.csv", csv_rows)


# ------------------------------------------------- cross-dataset and DG


def xd_sections(runs, declared, col):
    intro = (
        "Trained once on ImageNet (all classes), evaluated on each target. Cells: mean ± sample "
        "std over seeds (95% t-intervals in the CSV); ! = fewer seeds than expected. Average: "
        "mean over the targets, with (k/n) when only k of the n targets have results and ! when "
        "any averaged cell has fewer seeds than expected."
    )
    xd_rows, dg_rows, csv_rows = [], [], []
    extra_targets = set()
    groups = _groups(runs, "xd", ("trainer", "config", "shots"))
    results = {}
    for (trainer, config, shots), keys in groups.items():
        for key in keys:
            if key.part == "train" and key.dataset != XD_SOURCE:
                col.report(key.path("*"), f"unexpected source dataset (the protocol trains on {XD_SOURCE})")
        expected = _expected(runs, keys, declared)
        tests = {k.dataset: k for k in keys if k.part == "test"}
        extra_targets |= tests.keys() - set(XD_TARGETS + DG_TARGETS)
        tested_seeds = {s for k in tests.values() for s in runs[k] if runs[k][s].finished}
        cells = {}
        train_key = RunKey("xd", "train", XD_SOURCE, shots, trainer, config)
        acc = col.accuracies(
            train_key,
            expected,
            lambda s: "test results exist without it" if (s is None and tested_seeds) or s in tested_seeds else None,
        )
        cells[XD_SOURCE] = (summarize([acc[s] for s in sorted(acc)]), acc.keys() >= expected)
        for t in _ordered(XD_TARGETS + DG_TARGETS, tests.keys() | set(XD_TARGETS + DG_TARGETS)):
            acc = col.accuracies(train_key._replace(part="test", dataset=t), expected)
            cells[t] = (summarize([acc[s] for s in sorted(acc)]), acc.keys() >= expected)
        results[trainer, config, shots] = (cells, len(expected))

    extra = sorted(extra_targets)
    xd_rows, dg_rows, csv_rows = [], [], []
    for (trainer, config, shots), (cells, expected_n) in results.items():
        group = {"trainer": trainer, "config": config, "shots": shots}
        for d, (s, complete) in cells.items():
            role = "source" if d == XD_SOURCE else "target"
            csv_rows.append(
                group | {"dataset": _name(d), "role": role} | _stats_csv("", s)
                | {"expected_n": expected_n, "complete": complete}
            )
        for rows, targets, shown, label in (
            (xd_rows, XD_TARGETS, XD_TARGETS + extra, "cross-dataset"),
            (dg_rows, DG_TARGETS, DG_TARGETS, "domain generalisation"),
        ):
            avg = _average([cells[d] for d in targets])
            if avg:
                csv_rows.append(
                    group | {"dataset": f"Average ({label})", "role": "average", "n": avg[1]}
                    | {"mean": _f(avg[0]), "expected_n": len(targets)}
                    | {"complete": avg[1] == len(targets) and avg[2]}
                )
            row = [f"{trainer} / {config}", str(shots)]
            row += [_marked(*cells.get(d, (None, False))) for d in [XD_SOURCE] + shown]
            rows.append(row + [_average_cell(avg, len(targets))])

    if not results:
        return []

    def table(title, targets, rows):
        names = [_name(d) for d in [XD_SOURCE] + targets]
        return Table(title, ["Method", "Shots"] + names + ["Average"], rows)

    return [
        Section(
            "Cross-dataset transfer (source ImageNet)",
            intro,
            [table("Cross-dataset", XD_TARGETS + extra, xd_rows)],
            "xd.csv",
            csv_rows,
        ),
        Section(
            "Domain generalisation (source ImageNet)",
            "The same runs as the cross-dataset table, on the four ImageNet variants.",
            [table("Domain generalisation", DG_TARGETS, dg_rows)],
            None,
            [],
        ),
    ]


# ----------------------------------------------------------------------- CLI


def build_report(root, declared=(1, 2, 3), paper=None):
    """(sections, missing runs) of the output tree at `root`."""
    runs, problems = discover(root)
    if not runs and not problems:
        raise SystemExit(f"error: no runs under {root} (expected base2new/, fewshot/ or xd/ as the scripts write them)")
    col = Collector(runs)
    col.missing.extend(problems)
    sections = []
    if any(k.protocol == "base2new" for k in runs):
        sections.append(base2new_section(runs, declared, paper, col))
    grids = fewshot_grids(runs, declared, col)
    if grids:
        sections.append(fewshot_section(grids))
    sections.extend(xd_sections(runs, declared, col))
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
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.results", description=__doc__.split("\n\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument("--csv-dir", type=Path, help="where to write the CSV files (default: <output_root>/tables)")
    p.add_argument("--paper", action="store_true", help="add the published numbers of tools/paper_results.json")
    p.add_argument("--seeds", default="1 2 3", help='seeds every group should have (default "1 2 3")')
    args = p.parse_args(argv)
    if not args.output_root.is_dir():
        p.error(f"{args.output_root} is not a directory")
    declared = [int(s) for s in args.seeds.split()]
    paper = load_paper() if args.paper else None
    sections, missing = build_report(args.output_root, declared, paper)
    sys.stdout.write(render(args.output_root, sections, missing))
    csv_dir = args.csv_dir or args.output_root / "tables"
    csv_dir.mkdir(parents=True, exist_ok=True)
    for sec in sections:
        if sec.csv_name:
            write_csv(csv_dir / sec.csv_name, sec.csv_rows)
    miss = [{"run": path, "problem": problem} for path, problem in missing]
    write_csv(csv_dir / "missing_runs.csv", miss, header=["run", "problem"])
    print(f"CSV written to {csv_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
