"""The routing statistics files of a run (MoCoOp's experts, MoPD's teachers), as
trainers.runs.routing_stats.RoutingStats writes them, read for reports and figures."""

import json
from pathlib import Path
from typing import NamedTuple

STATS_FILES = {"expert_stats.json": "expert", "teacher_stats.json": "teacher"}


class Stats(NamedTuple):
    """A routing statistics file as trainers.runs.routing_stats.RoutingStats writes it."""

    path: Path
    names: list  # the candidates (experts' or teachers' templates), G of them
    top_k: int  # K: candidates kept per image
    classnames: list
    records: list


def read_stats(path):
    """The Stats of a routing statistics file, checked."""
    stats = json.loads(path.read_text())
    names, records = stats.get("names") or [], stats.get("records") or []
    for r in records:
        if len(r["selection_share"]) != len(names):
            raise ValueError(f"{path}: selection_share of epoch {r['epoch']} does not match names {names}")
    if not records:
        raise ValueError(f"{path}: no routing record")
    return Stats(path, names, stats.get("top_k", 1), stats.get("classnames") or [], records)


def last_record(records):
    """The test record of the latest epoch, else the latest training record."""
    for split in ("test", "train", "val"):
        chosen = [r for r in records if r["split"] == split]
        if chosen:
            return max(chosen, key=lambda r: r["epoch"])
    raise ValueError("no test, train or val record")
