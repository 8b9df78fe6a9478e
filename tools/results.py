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
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tabulate import tabulate

from tools import _paper
from tools._runlog import BENCHMARK, DG_TARGETS, DISPLAY, XD_SOURCE, XD_TARGETS, RunKey, discover
from tools._stats import harmonic, summarize


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


def _by_seed(acc):
    """Summary of {seed: accuracy}, in seed order (None when there is none)."""
    return summarize([acc[s] for s in sorted(acc)])


def _cell(s, ci=False):
    return "—" if s is None else _f(s.mean) + _spread(s, ci)


def _marked(s, complete):
    """A cell with ` !` when it has fewer seeds than expected."""
    return _cell(s) + ("" if s is None or complete else " !")


class Average(NamedTuple):
    """The mean of the cells' means over the `count` of `total` cells that have one;
    `complete`: each of those has every expected seed."""

    mean: float
    count: int
    total: int
    complete: bool

    @property
    def full(self):
        """Every cell has a mean and every seed."""
        return self.count == self.total and self.complete

    def cell(self):
        """`mean (count/total) !` as the tables print it."""
        missing = f" ({self.count}/{self.total})" if self.count < self.total else ""
        return _f(self.mean) + missing + ("" if self.complete else " !")

    def csv(self):
        return {"n": self.count, "mean": _f(self.mean), "expected_n": self.total, "complete": self.full}


def _average(cells):
    """The Average over [(Summary or None, complete)], or None when no cell has a mean."""
    have = [(s, c) for s, c in cells if s is not None]
    if not have:
        return None
    return Average(statistics.fmean(s.mean for s, _ in have), len(have), len(cells), all(c for _, c in have))


def _average_cell(avg):
    return "—" if avg is None else avg.cell()


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

    def accuracies(self, key, expected, dependents=(), note=None):
        """{seed: accuracy} of `key`'s finished runs, recording each expected seed
        without one; `note` is added where a seed of `dependents` (runs that need
        this one, e.g. test_new for train_base) has a result all the same."""
        states = self.runs.get(key, {})
        if not states:
            self.report(key.path("*"), "no runs", note if dependents else None)
            return {}
        acc = {s: st.accuracy for s, st in states.items() if st.finished}
        for s in sorted(expected - acc.keys()):
            problem = states[s].problem() if s in states else "no run directory"
            self.report(key.path(s), problem, note if s in dependents else None)
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


def base2new_section(runs, declared, paper, col, datasets=BENCHMARK):
    intro = (
        "Cells: mean ± sample std over seeds [95% t-interval of the mean]. H = 2·B·N/(B+N) of the "
        "mean Base and mean New (the CoOp-family convention); its ± and interval are those of "
        f"the per-seed H (Base and New of the same seed). Average: mean over the {len(datasets)} "
        "datasets of the per-dataset means, its H from the averaged Base and New."
    )
    tables, csv_rows, summary = [], [], []
    for (trainer, config, shots), keys in _groups(runs, "base2new", ("trainer", "config", "shots")).items():
        expected = _expected(runs, keys, declared)
        pub, notes = {}, []
        if paper is not None and shots == _paper.SHOTS:
            pub, notes = _paper.base2new_reference(paper, trainer)
        elif paper is not None:
            notes = [f"Paper: the published numbers are for {_paper.SHOTS} shots; none are shown here."]
        headers = ["Dataset", "Seeds", "Base", "New", "H"]
        if pub:
            headers += ["Paper Base", "Paper New", "Paper H"]
        headers.append("Flags")
        rows, averaged = [], []
        for d in _ordered(datasets, set(datasets) | {k.dataset for k in keys}):
            bkey = RunKey("base2new", "train_base", d, shots, trainer, config)
            nkey = bkey._replace(part="test_new")
            if bkey not in runs and nkey not in runs:
                col.report(
                    f"base2new/*/{d}/shots_{shots}/{trainer}/{config}/seed*", "no runs for this dataset"
                )
                continue
            new = col.accuracies(nkey, expected)
            base = col.accuracies(
                bkey, expected, new.keys(), "test_new has a result without it (new without base)"
            )
            flags = []
            if expected - base.keys():
                flags.append(f"base missing seeds {_seeds(expected - base.keys())}")
            if expected - new.keys():
                flags.append(f"new missing seeds {_seeds(expected - new.keys())}")
            if new.keys() - base.keys():
                flags.append(f"new without base: seeds {_seeds(new.keys() - base.keys())}")
            b, n = _by_seed(base), _by_seed(new)
            h = harmonic(b.mean, n.mean) if b and n else None
            h_seeds = summarize([harmonic(base[s], new[s]) for s in sorted(base.keys() & new.keys())])
            if d in datasets and b and n:
                averaged.append((d, b.mean, n.mean, bool(flags)))
            seeds = (
                _seeds(base)
                if base.keys() == new.keys()
                else f"base {_seeds(base) or 'none'}; new {_seeds(new) or 'none'}"
            )
            h_cell = "—" if h is None else _f(h) + _spread(h_seeds, ci=True)
            if len(datasets) == 1 and d in datasets:
                summary.append(
                    [
                        f"{trainer} / {config} ({shots} shots)",
                        seeds,
                        _cell(b),
                        _cell(n),
                        _f(h) + _spread(h_seeds),
                    ]
                )
            row = [_name(d), seeds, _cell(b, ci=True), _cell(n, ci=True), h_cell]
            record = {"trainer": trainer, "config": config, "shots": shots, "dataset": _name(d)}
            record |= {"base_seeds": _seeds(base)} | _stats_csv("base_", b)
            record |= {"new_seeds": _seeds(new)} | _stats_csv("new_", n)
            record |= {"H": _f(h)} | _stats_csv("H_seed_", h_seeds)
            if pub:
                row += _paper_row(pub.get(_name(d), {}), record)
            row.append("; ".join(flags))
            record["flags"] = "; ".join(flags)
            rows.append(row)
            csv_rows.append(record)
        if averaged:
            avg_b = statistics.fmean(a[1] for a in averaged)
            avg_n = statistics.fmean(a[2] for a in averaged)
            avg_h = harmonic(avg_b, avg_n)
            flags = []
            absent = [_name(d) for d in datasets if d not in {a[0] for a in averaged}]
            if absent:
                flags.append(f"over {len(averaged)}/{len(datasets)} datasets, without {', '.join(absent)}")
            if any(a[3] for a in averaged):
                flags.append("includes flagged datasets")
            row = ["Average", "", _f(avg_b), _f(avg_n), _f(avg_h)]
            if len(datasets) > 1:
                summary.append(
                    [
                        f"{trainer} / {config} ({shots} shots)",
                        f"{len(averaged)} datasets",
                        _f(avg_b),
                        _f(avg_n),
                        _f(avg_h),
                    ]
                )
            record = {"trainer": trainer, "config": config, "shots": shots, "dataset": "Average"}
            record |= {
                "datasets": len(averaged),
                "base_mean": _f(avg_b),
                "new_mean": _f(avg_n),
                "H": _f(avg_h),
            }
            if pub:
                row += _paper_row(pub.get("Average", {}), record)
            row.append("; ".join(flags))
            record["flags"] = "; ".join(flags)
            rows.append(row)
            csv_rows.append(record)
        tables.append(Table(f"{trainer} / {config} ({shots} shots)", headers, rows, notes))
    if len(summary) > 1:
        where = _name(datasets[0]) if len(datasets) == 1 else "average over the datasets"
        tables.insert(
            0,
            Table(
                f"All trainers ({where}; mean ± std over seeds)",
                ["Trainer / config", "Seeds", "Base", "New", "H"],
                summary,
            ),
        )
    return Section("Base-to-new generalisation", intro, tables, "base2new.csv", csv_rows)


def _paper_row(cells, record):
    """Paper Base/New/H cells (and CSV fields) of one row; † marks recomputed cells."""
    out = []
    for k in ("base", "new", "H"):
        value, printed = cells.get(k, (None, None))
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
    benchmark: list  # datasets the average is taken over

    def complete(self, dataset, k):
        s = self.cells.get((dataset, k))
        return s is not None and s.n == self.expected_n

    def average(self, k):
        """`_average` of the `k`-shot cells of the benchmark datasets."""
        return _average([(self.cells.get((d, k)), self.complete(d, k)) for d in self.benchmark])


def parse_curve(spec):
    """`Trainer=cfg1+cfg2+...` (the --fewshot-curve syntax) -> (trainer, [cfg1, cfg2, ...])."""
    trainer, sep, configs = spec.partition("=")
    members = [c for c in configs.split("+") if c]
    if not (trainer and sep and len(members) >= 2 and len(set(members)) == len(members)):
        raise SystemExit(
            f"error: --fewshot-curve {spec!r}: expected Trainer=config1+config2[+...] with distinct "
            "configs, e.g. CoOp=vit_b16_ep50+vit_b16_ep100+vit_b16_ep200"
        )
    return trainer, members


def _curve_sources(trainer, members, keys):
    """{shots: config} for a curve whose shot counts were run with different configs; a shot
    count found under two of them is ambiguous, so an error."""
    source = {}
    for key in sorted(keys):
        other = source.setdefault(key.shots, key.config)
        if other != key.config:
            raise SystemExit(
                f"error: --fewshot-curve {trainer}={'+'.join(members)}: {key.shots}-shot runs exist "
                f"under both {other} and {key.config}; a curve takes each shot count from one config"
            )
    return source


def fewshot_grids(runs, declared, col, datasets=BENCHMARK, curves=()):
    """One FewShotGrid per trainer/config; `curves` ([(trainer, [configs])], see
    --fewshot-curve) merge the configs of one trainer that were run for different shot counts
    (CoOp's protocol: 50 epochs for 1 shot, 100 for 2 and 4, 200 for 8 and 16)."""
    groups = _groups(runs, "fewshot", ("trainer", "config"))
    merged = {}
    for trainer, members in curves:
        keys = [k for c in members for k in groups.pop((trainer, c), [])]
        if keys:
            merged[trainer, "+".join(members)] = (keys, _curve_sources(trainer, members, keys))
        else:
            col.report(f"fewshot/*/shots_*/{trainer}/{{{','.join(members)}}}/seed*", "no runs")
    plain = {group: (keys, {k.shots: k.config for k in keys}) for group, keys in groups.items()}
    grids = []
    for (trainer, config), (keys, source) in sorted((plain | merged).items()):
        expected = _expected(runs, keys, declared)
        shots = sorted(source)
        found = _ordered(datasets, {k.dataset for k in keys})
        for d in datasets:
            if d not in found:
                col.report(f"fewshot/{d}/shots_*/{trainer}/{config}/seed*", "no runs for this dataset")
        cells = {}
        for d in found:
            for k in shots:
                acc = col.accuracies(RunKey("fewshot", "", d, k, trainer, source[k]), expected)
                if acc:
                    cells[d, k] = _by_seed(acc)
        grids.append(FewShotGrid(trainer, config, shots, found, cells, len(expected), list(datasets)))
    return grids


def fewshot_section(grids, paper=None):
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
            avg_row.append(_average_cell(avg))
            if avg:
                csv_rows.append(
                    {"trainer": g.trainer, "config": g.config, "dataset": "Average", "shots": k} | avg.csv()
                )
        rows.append(avg_row)
        notes = []
        if paper is not None:
            notes.append(
                "Paper: the MoCoOp paper gives few-shot results only as a figure (Figure 3), not numbers."
            )
        tables.append(Table(f"{g.trainer} / {g.config}", headers, rows, notes))
    return Section("Few-shot learning (all classes)", intro, tables, "fewshot.csv", csv_rows)


# ------------------------------------------------- cross-dataset and DG


def xd_sections(runs, declared, paper, col):
    intro = (
        "Trained once on ImageNet (all classes), evaluated on each target. Cells: mean ± sample "
        "std over seeds (95% t-intervals in the CSV); ! = fewer seeds than expected. Average: "
        "mean over the targets, with (k/n) when only k of the n targets have results and ! when "
        "any averaged cell has fewer seeds than expected."
    )
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
        acc = col.accuracies(train_key, expected, tested_seeds, "test results exist without it")
        cells[XD_SOURCE] = (_by_seed(acc), acc.keys() >= expected)
        for t in _ordered(XD_TARGETS + DG_TARGETS, tests.keys() | set(XD_TARGETS + DG_TARGETS)):
            acc = col.accuracies(train_key._replace(part="test", dataset=t), expected)
            cells[t] = (_by_seed(acc), acc.keys() >= expected)
        results[trainer, config, shots] = (cells, len(expected))

    extra = sorted(extra_targets)
    xd_rows, dg_rows, csv_rows = [], [], []
    for (trainer, config, shots), (cells, expected_n) in results.items():
        group = {"trainer": trainer, "config": config, "shots": shots}
        for d, (s, complete) in cells.items():
            role = "source" if d == XD_SOURCE else "target"
            csv_rows.append(
                group
                | {"dataset": _name(d), "role": role}
                | _stats_csv("", s)
                | {"expected_n": expected_n, "complete": complete}
            )
        for rows, targets, shown, label in (
            (xd_rows, XD_TARGETS, XD_TARGETS + extra, "cross-dataset"),
            (dg_rows, DG_TARGETS, DG_TARGETS, "domain generalisation"),
        ):
            avg = _average([cells[d] for d in targets])
            if avg:
                csv_rows.append(group | {"dataset": f"Average ({label})", "role": "average"} | avg.csv())
            row = [f"{trainer} / {config}", str(shots)]
            row += [_marked(*cells.get(d, (None, False))) for d in [XD_SOURCE] + shown]
            rows.append(row + [_average_cell(avg)])

    if not results:
        return []
    xd_notes, dg_notes = [], []
    if paper is not None:
        xd_notes.append("Paper: tools/paper_results.json has no cross-dataset numbers.")
        for trainer in dict.fromkeys(t for t, _, _ in results):
            ref = _paper.dg_reference(paper, trainer)
            if ref is None:
                continue
            name = f"{_paper.TABLE_NAME.get(trainer, trainer)} (paper)"
            mean = statistics.fmean(ref[d] for d in DG_TARGETS)
            dg_rows.append(
                [name, str(_paper.SHOTS)] + [_f(ref[d]) for d in [XD_SOURCE] + DG_TARGETS] + [_f(mean)]
            )
            for d, value in ref.items():
                csv_rows.append(
                    {
                        "trainer": name,
                        "shots": _paper.SHOTS,
                        "dataset": _name(d),
                        "role": "paper",
                        "mean": _f(value),
                    }
                )
        dg_notes.append(
            "Rows (paper): MoCoOp paper Table 3 as printed (tools/paper_results.json), trained on 16 shots "
            "of ImageNet; their Average is computed here over the four targets."
        )

    def table(title, targets, rows, notes):
        names = [_name(d) for d in [XD_SOURCE] + targets]
        return Table(title, ["Method", "Shots"] + names + ["Average"], rows, notes)

    return [
        Section(
            "Cross-dataset transfer (source ImageNet)",
            intro,
            [table("Cross-dataset", XD_TARGETS + extra, xd_rows, xd_notes)],
            "xd.csv",
            csv_rows,
        ),
        Section(
            "Domain generalisation (source ImageNet)",
            "The same runs as the cross-dataset table, on the four ImageNet variants.",
            [table("Domain generalisation", DG_TARGETS, dg_rows, dg_notes)],
            None,
            [],
        ),
    ]


# ----------------------------------------------------------------------- CLI


def build_report(root, declared=(1, 2, 3), paper=None, datasets=BENCHMARK, curves=()):
    """(sections, missing runs) of the output tree at `root`."""
    runs, problems = discover(root)
    if not runs and not problems:
        raise SystemExit(
            f"error: no runs under {root} (expected base2new/, fewshot/ or xd/ as the scripts write them)"
        )
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
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, restval="")
        writer.writeheader()
        writer.writerows(rows)


def add_curve_argument(parser):
    parser.add_argument(
        "--fewshot-curve",
        action="append",
        default=[],
        metavar="TRAINER=CFG1+CFG2",
        help="show the few-shot runs of these configs of TRAINER as one curve, each shot count "
        "from the config that ran it (repeatable); e.g. CoOp=vit_b16_ep50+vit_b16_ep100+vit_b16_ep200",
    )


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.results", description=__doc__.split("\n\n")[0])
    p.add_argument("output_root", type=Path)
    p.add_argument(
        "--csv-dir", type=Path, help="where to write the CSV files (default: <output_root>/tables)"
    )
    p.add_argument(
        "--paper", action="store_true", help="add the published numbers of tools/paper_results.json"
    )
    p.add_argument("--seeds", default="1 2 3", help='seeds every group should have (default "1 2 3")')
    p.add_argument(
        "--datasets",
        default=" ".join(BENCHMARK),
        help="datasets of the base-to-new and few-shot tables and their averages (default: the 11 of the papers)",
    )
    add_curve_argument(p)
    args = p.parse_args(argv)
    if not args.output_root.is_dir():
        p.error(f"{args.output_root} is not a directory")
    declared = [int(s) for s in args.seeds.split()]
    paper = _paper.load() if args.paper else None
    curves = [parse_curve(c) for c in args.fewshot_curve]
    sections, missing = build_report(args.output_root, declared, paper, args.datasets.split(), curves)
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
