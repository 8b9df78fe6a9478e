"""The few-shot tables: one per trainer/config (or per curve of configs), a row per dataset,
a column per shot count, and the average over the benchmark datasets."""

from dataclasses import dataclass

from tools.protocols import BENCHMARK
from tools.results.cells import (
    Section,
    Shots,
    Table,
    average,
    average_cell,
    by_seed,
    display_name,
    expected_seeds,
    groups,
    marked,
    ordered,
    shots_notes,
    stats_csv,
)
from tools.results.runlog import RunKey


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
    shots_info: dict  # (dataset, shots) -> Shots of the runs' training data

    def complete(self, dataset, k):
        s = self.cells.get((dataset, k))
        return s is not None and s.n == self.expected_n

    def average(self, k):
        """`average` of the `k`-shot cells of the benchmark datasets."""
        return average([(self.cells.get((d, k)), self.complete(d, k)) for d in self.benchmark])


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
    found_groups = groups(runs, "fewshot", ("trainer", "config"))
    merged = {}
    for trainer, members in curves:
        keys = [k for c in members for k in found_groups.pop((trainer, c), [])]
        if keys:
            merged[trainer, "+".join(members)] = (keys, _curve_sources(trainer, members, keys))
        else:
            col.report(f"fewshot/*/shots_*/{trainer}/{{{','.join(members)}}}/seed*", "no runs")
    plain = {group: (keys, {k.shots: k.config for k in keys}) for group, keys in found_groups.items()}
    grids = []
    for (trainer, config), (keys, source) in sorted((plain | merged).items()):
        expected = expected_seeds(runs, keys, declared)
        shots = sorted(source)
        found = ordered(datasets, {k.dataset for k in keys})
        for d in datasets:
            if d not in found:
                col.report(f"fewshot/{d}/shots_*/{trainer}/{config}/seed*", "no runs for this dataset")
        cells, shots_info = {}, {}
        for d in found:
            for k in shots:
                key = RunKey("fewshot", "", d, k, trainer, source[k])
                acc = col.accuracies(key, expected)
                if acc:
                    cells[d, k] = by_seed(acc)
                shots_info[d, k] = Shots.of(runs.get(key, {}))
        grids.append(
            FewShotGrid(trainer, config, shots, found, cells, len(expected), list(datasets), shots_info)
        )
    return grids


def fewshot_section(grids, paper=None):
    n = len(grids[0].benchmark)
    intro = (
        "Cells: mean ± sample std over seeds (95% t-intervals in the CSV); ! = fewer seeds than "
        "expected (see the missing runs); (min k shots) = some class had only k training images "
        f"(see the notes). Average: mean over the {n} datasets, with (k/{n}) when only k of them have "
        "that shot count and ! when any averaged cell has fewer seeds than expected."
    )
    tables, csv_rows = [], []
    for g in grids:
        headers = ["Dataset"] + [f"{k} shot" + ("s" if k > 1 else "") for k in g.shots]
        rows = []
        for d in g.datasets:
            row = [display_name(d)]
            for k in g.shots:
                s, shots = g.cells.get((d, k)), g.shots_info[d, k]
                least = shots.csv()["effective_shots_min"]
                row.append(marked(s, g.complete(d, k)) + (f" (min {least} shots)" if shots.short else ""))
                record = {"trainer": g.trainer, "config": g.config, "dataset": display_name(d), "shots": k}
                record |= stats_csv("", s) | {"expected_n": g.expected_n, "complete": g.complete(d, k)}
                record |= shots.csv()
                csv_rows.append(record)
            rows.append(row)
        avg_row = ["Average"]
        for k in g.shots:
            avg = g.average(k)
            avg_row.append(average_cell(avg))
            if avg:
                csv_rows.append(
                    {"trainer": g.trainer, "config": g.config, "dataset": "Average", "shots": k} | avg.csv()
                )
        rows.append(avg_row)
        notes = shots_notes(
            {f"{display_name(d)}, {k} shots": g.shots_info[d, k] for d in g.datasets for k in g.shots}
        )
        if paper is not None:
            notes.append(
                "Paper: the MoCoOp paper gives few-shot results only as a figure (Figure 3), not numbers."
            )
        tables.append(Table(f"{g.trainer} / {g.config}", headers, rows, notes))
    return Section("Few-shot learning (all classes)", intro, tables, "fewshot.csv", csv_rows)
