"""What every results table shares: cell formatting, averages over datasets, the tables and
sections a report is made of, and the bookkeeping of missing runs."""

import statistics
from dataclasses import dataclass, field
from typing import NamedTuple

from tabulate import tabulate

from tools.protocols import DISPLAY
from tools.results.stats import summarize


def fmt(x):
    return "" if x is None else f"{x:.2f}"


def spread(s, ci=False):
    """` ± std [lo, hi]`, empty when n = 1 cannot give them."""
    if s is None or s.std is None:
        return ""
    text = f" ± {fmt(s.std)}"
    if ci:
        lo, hi = s.ci
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    return text


def by_seed(acc):
    """Summary of {seed: accuracy}, in seed order (None when there is none)."""
    return summarize([acc[s] for s in sorted(acc)])


def cell(s, ci=False):
    return "—" if s is None else fmt(s.mean) + spread(s, ci)


def marked(s, complete):
    """A cell with ` !` when it has fewer seeds than expected."""
    return cell(s) + ("" if s is None or complete else " !")


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
        return fmt(self.mean) + missing + ("" if self.complete else " !")

    def csv(self):
        return {"n": self.count, "mean": fmt(self.mean), "expected_n": self.total, "complete": self.full}


def average(cells):
    """The Average over [(Summary or None, complete)], or None when no cell has a mean."""
    have = [(s, c) for s, c in cells if s is not None]
    if not have:
        return None
    return Average(statistics.fmean(s.mean for s, _ in have), len(have), len(cells), all(c for _, c in have))


def average_cell(avg):
    return "—" if avg is None else avg.cell()


def stats_csv(prefix, s):
    lo, hi = s.ci if s and s.ci else (None, None)
    return {
        f"{prefix}n": s.n if s else 0,
        f"{prefix}mean": fmt(s.mean) if s else "",
        f"{prefix}std": fmt(s.std) if s else "",
        f"{prefix}ci95_low": fmt(lo),
        f"{prefix}ci95_high": fmt(hi),
    }


class Shots(NamedTuple):
    """What the training runs of a cell say about their shots (data_summary.json)."""

    short: dict  # {seed: (effective shots, short classes {name: images}, number of classes)}
    unknown: list  # seeds whose runs have no data_summary.json

    @classmethod
    def of(cls, states):
        """From {seed: RunState} of the training runs (train_base, fewshot, xd/train)."""
        short, unknown = {}, []
        for seed, state in sorted(states.items()):
            if state.data is None:
                unknown.append(seed)
            elif state.data.get("short_classes"):
                data = state.data
                short[seed] = (
                    data["effective_shots"],
                    data["short_classes"],
                    len(data["train_images_per_class"]),
                )
        return cls(short, unknown)

    def flag(self):
        """`fewer shots: seeds 1,2 (3 of 20 classes, min 6)`, empty when every class had its shots."""
        if not self.short:
            return ""
        classes = max(len(c) for _, c, _ in self.short.values())
        total = max(n for _, _, n in self.short.values())
        least = min(e for e, _, _ in self.short.values())
        return f"fewer shots: seeds {seed_list(self.short)} ({classes} of {total} classes, min {least})"

    def csv(self):
        """CSV fields: the fewest training images of a class over the seeds, and the short classes."""
        known = [e for e, _, _ in self.short.values()]
        classes = sorted({f"{name} ({n})" for _, c, _ in self.short.values() for name, n in c.items()})
        return {"effective_shots_min": min(known) if known else "", "short_classes": "; ".join(classes)}


def shots_notes(shots_by_label):
    """Table notes for {row or cell label: Shots}: the classes trained on fewer images than
    NUM_SHOTS, and the runs whose shots cannot be checked."""
    notes = []
    for label, shots in shots_by_label.items():
        for seed, (_, classes, _) in shots.short.items():
            listed = ", ".join(f"{name} ({n})" for name, n in classes.items())
            notes.append(f"{label}, seed {seed}: fewer training images than NUM_SHOTS for {listed}.")
    unknown = sum(len(s.unknown) for s in shots_by_label.values())
    if unknown:
        notes.append(
            f"Shots not checked for {unknown} run(s): no data_summary.json (runs of an older version)."
        )
    return notes


def seed_list(seeds):
    return ",".join(str(s) for s in sorted(seeds))


def display_name(dataset):
    return DISPLAY.get(dataset, dataset)


def ordered(known, found):
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


def groups(runs, protocol, fields):
    """The run keys of `protocol`, grouped by the values of `fields`, in sorted order."""
    found = {}
    for key in runs:
        if key.protocol == protocol:
            found.setdefault(tuple(getattr(key, f) for f in fields), []).append(key)
    return dict(sorted(found.items()))


def expected_seeds(runs, keys, declared):
    """Seeds a group should have: the declared ones and any seed run anywhere in it."""
    return set(declared) | {s for k in keys for s in runs[k]}
