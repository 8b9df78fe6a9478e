"""The base-to-new table: one per trainer/config/shots, a row per dataset and the average."""

import statistics
from dataclasses import dataclass

from tools.protocols import BENCHMARK
from tools.results import paper as published
from tools.results.cells import (
    Section,
    Shots,
    Table,
    by_seed,
    cell,
    display_name,
    expected_seeds,
    fmt,
    groups,
    ordered,
    seed_list,
    shots_notes,
    spread,
    stats_csv,
)
from tools.results.runlog import RunKey
from tools.results.stats import harmonic, summarize

INTRO = (
    "Cells: mean ± sample std over seeds [95% t-interval of the mean]. H = 2·B·N/(B+N) of the "
    "mean Base and mean New (the CoOp-family convention); its ± and interval are those of "
    "the per-seed H (Base and New of the same seed). Average: mean over the {n} "
    "datasets of the per-dataset means, its H from the averaged Base and New."
)


@dataclass
class Group:
    """The runs of one trainer/config/shots table and the paper's cells shown next to them."""

    trainer: str
    config: str
    shots: int
    keys: list
    expected: set  # seeds each dataset should have
    pub: dict  # published cells by display name (tools.results.paper), empty when none are shown

    @property
    def title(self):
        return f"{self.trainer} / {self.config} ({self.shots} shots)"

    def record(self, dataset):
        """The CSV fields that name a row of this table."""
        return {"trainer": self.trainer, "config": self.config, "shots": self.shots, "dataset": dataset}


@dataclass
class DatasetResult:
    """One dataset's row of a table, with what the summary and the average take from it."""

    row: list
    record: dict
    base: object  # Summary or None
    new: object
    h: float | None
    h_seeds: object  # Summary of the per-seed H, or None
    seeds: str
    flagged: bool
    shots: Shots  # of the train_base runs


def base2new_section(runs, declared, paper, col, datasets=BENCHMARK):
    tables, csv_rows, summary = [], [], []
    for (trainer, config, shots), keys in groups(runs, "base2new", ("trainer", "config", "shots")).items():
        pub, notes = _paper_reference(paper, trainer, config, shots)
        group = Group(trainer, config, shots, keys, expected_seeds(runs, keys, declared), pub)
        rows, records, summary_rows, training_shots = _group_rows(runs, col, group, datasets)
        notes = notes + shots_notes(training_shots)
        headers = ["Dataset", "Seeds", "Base", "New", "H"]
        if pub:
            headers += ["Paper Base", "Paper New", "Paper H"]
        headers.append("Flags")
        tables.append(Table(group.title, headers, rows, notes))
        csv_rows += records
        summary += summary_rows
    if len(summary) > 1:
        where = display_name(datasets[0]) if len(datasets) == 1 else "average over the datasets"
        # With published numbers, each trainer's beside its row: the paper's table, row by row.
        paper_headers = ["Paper Base", "Paper New", "Paper H"] if paper is not None else []
        tables.insert(
            0,
            Table(
                f"All trainers ({where}; mean ± std over seeds)",
                ["Trainer / config", "Seeds", "Base", "New", "H", *paper_headers],
                [row + (published_cells if paper is not None else []) for row, published_cells in summary],
            ),
        )
    return Section(
        "Base-to-new generalisation", INTRO.format(n=len(datasets)), tables, "base2new.csv", csv_rows
    )


def _paper_reference(paper, trainer, config, shots):
    """(published cells, notes) of a table: the cells only where the paper's shot count is."""
    if paper is None:
        return {}, []
    if shots == published.SHOTS:
        return published.base2new_reference(paper, trainer, config)
    return {}, [f"Paper: the published numbers are for {published.SHOTS} shots; none are shown here."]


def _group_rows(runs, col, group, datasets):
    """(table rows, CSV rows, rows of the all-trainers summary with their published cells) of
    one group."""
    rows, records, summary, averaged, shots = [], [], [], [], {}
    for d in ordered(datasets, set(datasets) | {k.dataset for k in group.keys}):
        result = _dataset_result(runs, col, group, d)
        if result is None:
            continue
        rows.append(result.row)
        records.append(result.record)
        shots[display_name(d)] = result.shots
        if d not in datasets:
            continue
        if result.base and result.new:
            averaged.append((d, result.base.mean, result.new.mean, result.flagged))
        if len(datasets) == 1:
            cells = [cell(result.base), cell(result.new), fmt(result.h) + spread(result.h_seeds)]
            pub = _paper_row(group.pub.get(display_name(d), {}), {})
            summary.append(([group.title, result.seeds, *cells], pub))
    if averaged:
        row, record = _average_row(group, averaged, datasets)
        rows.append(row)
        records.append(record)
        if len(datasets) > 1:
            pub = _paper_row(group.pub.get("Average", {}), {})
            summary.append(([group.title, f"{len(averaged)} datasets", *row[2:5]], pub))
    return rows, records, summary, shots


def _dataset_result(runs, col, group, d):
    """The row of dataset `d`, or None (a missing-runs entry) when it has no runs at all."""
    bkey = RunKey("base2new", "train_base", d, group.shots, group.trainer, group.config)
    nkey = bkey._replace(part="test_new")
    if bkey not in runs and nkey not in runs:
        col.report(
            f"base2new/*/{d}/shots_{group.shots}/{group.trainer}/{group.config}/seed*",
            "no runs for this dataset",
        )
        return None
    expected = group.expected
    new = col.accuracies(nkey, expected)
    base = col.accuracies(bkey, expected, new.keys(), "test_new has a result without it (new without base)")
    flags = []
    if expected - base.keys():
        flags.append(f"base missing seeds {seed_list(expected - base.keys())}")
    if expected - new.keys():
        flags.append(f"new missing seeds {seed_list(expected - new.keys())}")
    if new.keys() - base.keys():
        flags.append(f"new without base: seeds {seed_list(new.keys() - base.keys())}")
    shots = Shots.of(runs.get(bkey, {}))
    if shots.flag():
        flags.append(shots.flag())
    b, n = by_seed(base), by_seed(new)
    h = harmonic(b.mean, n.mean) if b and n else None
    h_seeds = summarize([harmonic(base[s], new[s]) for s in sorted(base.keys() & new.keys())])
    seeds = (
        seed_list(base)
        if base.keys() == new.keys()
        else f"base {seed_list(base) or 'none'}; new {seed_list(new) or 'none'}"
    )
    h_cell = "—" if h is None else fmt(h) + spread(h_seeds, ci=True)
    row = [display_name(d), seeds, cell(b, ci=True), cell(n, ci=True), h_cell]
    record = group.record(display_name(d))
    record |= {"base_seeds": seed_list(base)} | stats_csv("base_", b)
    record |= {"new_seeds": seed_list(new)} | stats_csv("new_", n)
    record |= {"H": fmt(h)} | stats_csv("H_seed_", h_seeds) | shots.csv()
    if group.pub:
        row += _paper_row(group.pub.get(display_name(d), {}), record)
    row.append("; ".join(flags))
    record["flags"] = "; ".join(flags)
    return DatasetResult(row, record, b, n, h, h_seeds, seeds, bool(flags), shots)


def _average_row(group, averaged, datasets):
    """(row, CSV row) of the average over the datasets in `averaged` ([(dataset, base, new,
    flagged)]): the mean Base and New, and H of those means."""
    avg_b = statistics.fmean(a[1] for a in averaged)
    avg_n = statistics.fmean(a[2] for a in averaged)
    avg_h = harmonic(avg_b, avg_n)
    flags = []
    absent = [display_name(d) for d in datasets if d not in {a[0] for a in averaged}]
    if absent:
        flags.append(f"over {len(averaged)}/{len(datasets)} datasets, without {', '.join(absent)}")
    if any(a[3] for a in averaged):
        flags.append("includes flagged datasets")
    row = ["Average", "", fmt(avg_b), fmt(avg_n), fmt(avg_h)]
    record = group.record("Average")
    record |= {"datasets": len(averaged), "base_mean": fmt(avg_b), "new_mean": fmt(avg_n), "H": fmt(avg_h)}
    if group.pub:
        row += _paper_row(group.pub.get("Average", {}), record)
    row.append("; ".join(flags))
    record["flags"] = "; ".join(flags)
    return row, record


def _paper_row(cells, record):
    """Paper Base/New/H cells (and CSV fields) of one row; † marks recomputed cells."""
    out = []
    for k in ("base", "new", "H"):
        value, printed = cells.get(k, (None, None))
        record[f"paper_{k}"] = fmt(value)
        record[f"paper_{k}_printed"] = fmt(printed)
        out.append("—" if value is None else fmt(value) + ("†" if printed is not None else ""))
    return out
