"""Finding the runs of an output tree and reading the result of each run.

A run directory is `<protocol dir>/<dataset>/shots_<K>/<Trainer>/<config>/seed<s>`
(see docs/PROTOCOLS.md). Its result is the last `=> result` block of its newest
log. train.py appends every start (resume, re-evaluation) to `log.txt`, each headed by
`==== train.py start <timestamp> ====`; Dassl's logger, used before, wrote
`log.txt-<timestamp>` on every later start instead. So the newest log is `log.txt` unless a
stamped log is newer than its last start line (an older run continued by Dassl's logger).
scripts/_common.sh calls `read_run` to decide what is finished.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

_STAMPED_LOG = re.compile(r"log\.txt-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}")
_START_LINE = re.compile(r"^==== train\.py start (\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}) ====$", re.MULTILINE)
_FIELD = re.compile(r"\* (\w+): ([\d,]+(?:\.\d+)?)%?")
_FIELD_NAME = re.compile(r"\* (\w+):")
# Dassl prints the accuracy with one decimal: it may differ from correct / total by half of 0.1.
ROUNDING = 0.05 + 1e-9
_SHOTS = re.compile(r"shots_(\d+)")
_SEED = re.compile(r"seed(\d+)")

# (protocol, part) -> directory below the output root.
LAYOUTS = {
    ("base2new", "train_base"): "base2new/train_base",
    ("base2new", "test_new"): "base2new/test_new",
    ("fewshot", ""): "fewshot",
    ("xd", "train"): "xd/train",
    ("xd", "test"): "xd/test",
}


class RunKey(NamedTuple):
    protocol: str
    part: str
    dataset: str
    shots: int
    trainer: str
    config: str

    def path(self, seed):
        """The run directory of `seed`, relative to the output root."""
        return (
            f"{LAYOUTS[self.protocol, self.part]}/{self.dataset}/shots_{self.shots}/"
            f"{self.trainer}/{self.config}/seed{seed}"
        )


@dataclass(frozen=True)
class RunState:
    path: Path
    log: Path | None  # the newest log file, None when there is none
    accuracy: float | None  # from the last result block of `log`, None when unfinished or unreadable
    # The run's data_summary.json (the training data train.py actually used: num_shots,
    # effective_shots, short_classes), None for runs of versions that did not write it.
    data: dict | None = None
    # Why the last result block of `log` gives no accuracy (numbers unreadable, missing or in
    # disagreement), None when it gives one or there is none.
    unreadable: str | None = None

    @property
    def finished(self):
        return self.accuracy is not None

    def problem(self):
        if self.log is None:
            return "unfinished: no log file"
        if self.unreadable:
            return f"unreadable result: the last result block of {self.log.name}: {self.unreadable}"
        return f"unfinished: no result block in {self.log.name}"


def newest_log(run_dir):
    run_dir = Path(run_dir)
    stamped = sorted(p.name for p in run_dir.iterdir() if _STAMPED_LOG.fullmatch(p.name) and p.is_file())
    plain = run_dir / "log.txt"
    if not stamped:
        return plain if plain.is_file() else None
    if plain.is_file():
        starts = _START_LINE.findall(plain.read_text(errors="replace"))
        if starts and starts[-1] >= stamped[-1].removeprefix("log.txt-"):
            return plain
    return run_dir / stamped[-1]


def last_result(text):
    """Fields of the last `=> result` block (the `* name: value` lines right after it): floats,
    None for a line whose value does not read as a number; None when there is no block or the
    last one has no accuracy line."""
    blocks = []
    in_block = False
    for line in text.splitlines():
        line = line.rstrip()
        if line == "=> result":
            blocks.append({})
            in_block = True
        elif in_block and line.startswith("* "):
            m = _FIELD.fullmatch(line)
            named = m or _FIELD_NAME.match(line)
            if named:  # a line without a readable name counts as missing
                blocks[-1][named[1]] = float(m[2].replace(",", "")) if m else None
        else:
            in_block = False
    if blocks and "accuracy" in blocks[-1]:
        return blocks[-1]
    return None


def result_accuracy(block):
    """(accuracy, None) of a result block, or (None, what is wrong with its numbers).

    Dassl prints the accuracy rounded to 0.1 and the exact correct / total: both must be there
    and agree. A block with an accuracy alone (no total and no correct line) gives that."""
    lines = {name: block.get(name, "missing") for name in ("total", "correct", "accuracy")}
    if lines["total"] == lines["correct"] == "missing" and lines["accuracy"] is not None:
        return block["accuracy"], None
    for name, value in lines.items():
        if value == "missing":
            return None, f"it has no * {name}: line"
        if value is None:
            return None, f"its * {name}: line is unreadable"
    if not block["total"]:
        return None, "its * total: is 0"
    exact = 100.0 * block["correct"] / block["total"]
    if abs(exact - block["accuracy"]) > ROUNDING:
        return None, f"correct / total is {exact:.2f}% but its accuracy line says {block['accuracy']:.1f}%"
    return exact, None


def read_run(run_dir):
    run_dir = Path(run_dir)
    log = newest_log(run_dir)
    block = last_result(log.read_text(errors="replace")) if log else None
    accuracy, unreadable = result_accuracy(block) if block else (None, None)
    return RunState(run_dir, log, accuracy, read_data_summary(run_dir), unreadable)


def read_data_summary(run_dir):
    path = Path(run_dir) / "data_summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(
            f"error: {path} is not valid JSON ({err}); train.py writes it atomically, so something "
            "else changed it: delete it (the run's shots are then reported as unknown) or re-run the run"
        ) from None


def discover(root):
    """All run directories under `root`: ({RunKey: {seed: RunState}}, problems),
    problems being (relative path, what is wrong) for directories at run depth
    whose names do not fit the layout."""
    root = Path(root)
    runs, problems = {}, []
    for (protocol, part), sub in LAYOUTS.items():
        base = root / sub
        if not base.is_dir():
            continue
        for run_dir in sorted(base.glob("*/*/*/*/*")):
            if not run_dir.is_dir():
                continue
            dataset, shots, trainer, config, seed = run_dir.relative_to(base).parts
            m_shots, m_seed = _SHOTS.fullmatch(shots), _SEED.fullmatch(seed)
            if not (m_shots and m_seed):
                problems.append(
                    (
                        str(run_dir.relative_to(root)),
                        "not a run directory (expected <dataset>/shots_<K>/<Trainer>/<config>/seed<N>)",
                    )
                )
                continue
            key = RunKey(protocol, part, dataset, int(m_shots[1]), trainer, config)
            runs.setdefault(key, {})[int(m_seed[1])] = read_run(run_dir)
    return runs, problems
