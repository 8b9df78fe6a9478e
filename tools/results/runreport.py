"""The report of runs outside an output tree: one run's folder, a folder of seeds, any folder of
runs (tools.results.rungroups). Per group of seeds a table, a row per run: its result (the last
`=> result` block of its newest log, as everywhere), epochs trained, the last epoch's loss
terms, the training data it used (`data_summary.json`) and, for models that route, the experts
or teachers most images chose; then the mean over the runs and notes on their data.
"""

import statistics

from tools.results.cells import Section, Table, fmt
from tools.results.epochs import read_epochs
from tools.results.routing import STATS_FILES, last_record, read_stats
from tools.results.rungroups import folder_groups
from tools.results.runlog import last_result, read_run

HEADERS = [
    "Run",
    "Accuracy",
    "Correct / total",
    "Macro F1",
    "Epochs",
    "Last epoch's losses",
    "Shots",
    "Routing",
]
TOP_CANDIDATES = 3


def _losses(log):
    if not log.train:
        return "—"
    last = log.train[max(log.train)]
    return ", ".join(f"{name} {value:.3f}" for name, value in last.items() if name not in ("acc", "lr"))


def _shots(data):
    """`16` when every class had the shots asked for, `16 (fewest 6)` otherwise, `—` without a
    data_summary.json (evaluation-only runs train on nothing)."""
    if not data:
        return "—"
    asked, fewest = data.get("num_shots"), data.get("effective_shots")
    if asked is None or asked <= 0:
        return "all"
    return str(asked) if fewest in (None, asked) else f"{asked} (fewest {fewest})"


def _routing(run):
    """The candidates most images chose in the run's last routing record, with their shares."""
    for fname, kind in STATS_FILES.items():
        path = run / fname
        if path.is_file():
            stats = read_stats(path)
            names, top_k, record = stats.names, stats.top_k, last_record(stats.records)
            shares = sorted(zip(record["selection_share"], names), reverse=True)[:TOP_CANDIDATES]
            chosen = "; ".join(f"{100 * top_k * s:.0f} % {name}" for s, name in shares)
            uniform = 100 * top_k / len(names)
            return f"{kind}s ({record['split']}, epoch {record['epoch']}): {chosen} (uniform {uniform:.0f} %)"
    return ""


def run_row(label, run):
    """(table row, CSV row) of one run."""
    state = read_run(run)
    fields = last_result(state.log.read_text(errors="replace")) if state.log else None
    log = read_epochs(state.log)
    epochs = f"{max(log.train)}/{log.max_epoch}" if log.train else "— (evaluation only)"
    data = state.data
    counted = f"{int(fields['correct'])} / {int(fields['total'])}" if fields and "total" in fields else ""
    row = [
        label,
        fmt(state.accuracy) if state.finished else state.problem(),
        counted,
        fmt(fields.get("macro_f1")) if fields else "",
        epochs,
        _losses(log),
        _shots(data),
        _routing(run),
    ]
    csv_row = dict(
        zip(["run", "accuracy", "correct_total", "macro_f1", "epochs", "losses", "shots", "routing"], row)
    )
    csv_row["folder"] = str(run)
    return row, csv_row, state


def _data_note(data):
    if not data:
        return None
    per_class = data.get("train_images_per_class") or {}
    counts = list(per_class.values())
    text = f"{data.get('dataset')}, {data.get('subsample_classes')} classes ({len(per_class)})"
    if counts:
        text += f", {sum(counts)} training images ({min(counts)}–{max(counts)} per class)"
    short = data.get("short_classes") or {}
    if short:
        text += f"; fewer than {data.get('num_shots')} shots: " + ", ".join(
            f"{c} ({n})" for c, n in short.items()
        )
    return text


def group_section(group):
    rows, csv_rows, notes, accuracies = [], [], {}, []
    for label, run in group.runs.items():
        row, csv_row, state = run_row(label, run)
        rows.append(row)
        csv_rows.append({"group": group.title, **csv_row})
        if state.finished:
            accuracies.append(state.accuracy)
        if note := _data_note(state.data):
            notes.setdefault(note, []).append(label)
    if len(accuracies) > 1:
        mean, std = statistics.fmean(accuracies), statistics.stdev(accuracies)
        rows.append([f"mean over {len(accuracies)}", f"{fmt(mean)} ± {fmt(std)}", *[""] * 6])
    table = Table(
        group.title,
        HEADERS,
        rows,
        ["Training data (data_summary.json): " + "; ".join(notes)] if notes else [],
    )
    return table, csv_rows


def runs_section(root):
    """The Section of the runs at or below `root`, or None when there is none."""
    groups = folder_groups(root)
    if not groups:
        return None
    tables, csv_rows = [], []
    for group in groups:
        table, rows = group_section(group)
        tables.append(table)
        csv_rows += rows
    count = sum(len(g.runs) for g in groups)
    intro = (
        f"{count} run folder(s) under {root}: each run's result (its newest "
        "log's last `=> result` block), epochs, the last epoch's mean loss terms, and for routed "
        "models the share of images that have each of the most chosen candidates among their top K. "
        f"Figures: python -m tools.plots {root}"
    )
    return Section("Runs", intro, tables, "runs.csv", csv_rows)
