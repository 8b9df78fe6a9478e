"""The cross-dataset and domain-generalisation tables: models trained once on the source
(ImageNet), a column per target, a row per trainer/config/shots."""

import statistics

from tools.protocols import DG_TARGETS, XD_SOURCE, XD_TARGETS
from tools.results import paper as published
from tools.results.cells import (
    Section,
    Shots,
    Table,
    average,
    average_cell,
    by_seed,
    display_name,
    expected_seeds,
    fmt,
    groups,
    marked,
    ordered,
    shots_notes,
    stats_csv,
)
from tools.results.runlog import RunKey

INTRO = (
    "Trained once on ImageNet (all classes), evaluated on each target. Cells: mean ± sample "
    "std over seeds (95% t-intervals in the CSV); ! = fewer seeds than expected. Average: "
    "mean over the targets, with (k/n) when only k of the n targets have results and ! when "
    "any averaged cell has fewer seeds than expected."
)


def xd_sections(runs, declared, paper, col):
    results, extra = _collect(runs, declared, col)
    if not results:
        return []
    xd_rows, dg_rows, csv_rows = _rows(results, extra)
    xd_notes = shots_notes({f"{t} / {c} ({k} shots)": r[2] for (t, c, k), r in results.items()})
    dg_notes = []
    if paper is not None:
        xd_notes.append("Paper: tools/paper_results.json has no cross-dataset numbers.")
        rows, records = _paper_dg_rows(paper, results)
        dg_rows += rows
        csv_rows += records
        dg_notes.append(
            "Rows (paper): MoCoOp paper Table 3 as printed (tools/paper_results.json), or the method's own "
            "paper for methods that table lacks (MaPLe, PromptSRC), trained on 16 shots of ImageNet; their "
            "Average is computed here over the four targets."
        )
    return [
        Section(
            "Cross-dataset transfer (source ImageNet)",
            INTRO,
            [_table("Cross-dataset", XD_TARGETS + extra, xd_rows, xd_notes)],
            "xd.csv",
            csv_rows,
        ),
        Section(
            "Domain generalisation (source ImageNet)",
            "The same runs as the cross-dataset table, on the four ImageNet variants.",
            [_table("Domain generalisation", DG_TARGETS, dg_rows, dg_notes)],
            None,
            [],
        ),
    ]


def _collect(runs, declared, col):
    """({(trainer, config, shots): ({dataset: (Summary, complete)}, expected seed count)}, the
    targets found beyond the protocol's, sorted)."""
    extra_targets = set()
    results = {}
    for (trainer, config, shots), keys in groups(runs, "xd", ("trainer", "config", "shots")).items():
        for key in keys:
            if key.part == "train" and key.dataset != XD_SOURCE:
                col.report(key.path("*"), f"unexpected source dataset (the protocol trains on {XD_SOURCE})")
        expected = expected_seeds(runs, keys, declared)
        tests = {k.dataset: k for k in keys if k.part == "test"}
        extra_targets |= tests.keys() - set(XD_TARGETS + DG_TARGETS)
        tested_seeds = {s for k in tests.values() for s in runs[k] if runs[k][s].finished}
        cells = {}
        train_key = RunKey("xd", "train", XD_SOURCE, shots, trainer, config)
        acc = col.accuracies(train_key, expected, tested_seeds, "test results exist without it")
        cells[XD_SOURCE] = (by_seed(acc), acc.keys() >= expected)
        for t in _expected_targets(tests.keys()):
            acc = col.accuracies(train_key._replace(part="test", dataset=t), expected)
            cells[t] = (by_seed(acc), acc.keys() >= expected)
        results[trainer, config, shots] = (cells, len(expected), Shots.of(runs.get(train_key, {})))
    return results, sorted(extra_targets)


def _expected_targets(found):
    """The targets a group is expected to have: the protocol's 14 (and any others found) when it
    ran any of them; only those found when it ran other targets alone (a user's own dataset as
    the only target is not 14 missing runs)."""
    standard = XD_TARGETS + DG_TARGETS
    if found & set(standard):
        return ordered(standard, found | set(standard))
    return sorted(found)


def _rows(results, extra):
    """(cross-dataset rows, DG rows, CSV rows) of the measured results."""
    xd_rows, dg_rows, csv_rows = [], [], []
    for (trainer, config, shots), (cells, expected_n, training_shots) in results.items():
        group = {"trainer": trainer, "config": config, "shots": shots}
        for d, (s, complete) in cells.items():
            role = "source" if d == XD_SOURCE else "target"
            csv_rows.append(
                group
                | {"dataset": display_name(d), "role": role}
                | stats_csv("", s)
                | {"expected_n": expected_n, "complete": complete}
                | (training_shots.csv() if d == XD_SOURCE else {})
            )
        for rows, targets, shown, label in (
            (xd_rows, XD_TARGETS, XD_TARGETS + extra, "cross-dataset"),
            (dg_rows, DG_TARGETS, DG_TARGETS, "domain generalisation"),
        ):
            avg = average([cells.get(d, (None, False)) for d in targets])
            if avg:
                csv_rows.append(group | {"dataset": f"Average ({label})", "role": "average"} | avg.csv())
            row = [f"{trainer} / {config}", str(shots)]
            least = training_shots.csv()["effective_shots_min"]
            source = f" (min {least} shots)" if training_shots.short else ""
            row += [marked(*cells.get(XD_SOURCE, (None, False))) + source]
            row += [marked(*cells.get(d, (None, False))) for d in shown]
            rows.append(row + [average_cell(avg)])
    return xd_rows, dg_rows, csv_rows


def _paper_dg_rows(paper, results):
    """(DG rows, CSV rows) of the published Table 3 for the trainers that have results."""
    rows, csv_rows = [], []
    for trainer in dict.fromkeys(t for t, _, _ in results):
        ref = published.dg_reference(paper, trainer)
        if ref is None:
            continue
        name = f"{published.paper_name(paper, trainer, 'mocoop_table3_domain_generalisation')} (paper)"
        mean = statistics.fmean(ref[d] for d in DG_TARGETS)
        rows.append(
            [name, str(published.SHOTS)] + [fmt(ref[d]) for d in [XD_SOURCE] + DG_TARGETS] + [fmt(mean)]
        )
        for d, value in ref.items():
            csv_rows.append(
                {
                    "trainer": name,
                    "shots": published.SHOTS,
                    "dataset": display_name(d),
                    "role": "paper",
                    "mean": fmt(value),
                }
            )
    return rows, csv_rows


def _table(title, targets, rows, notes):
    names = [display_name(d) for d in [XD_SOURCE] + targets]
    return Table(title, ["Method", "Shots"] + names + ["Average"], rows, notes)
