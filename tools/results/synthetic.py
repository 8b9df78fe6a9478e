"""Synthetic run directories in the protocol layout, with Dassl-format logs.

For the tests and for the example tables of docs/PROTOCOLS.md; nothing here
trains or evaluates a model.

    python -m tools.results.synthetic <new output root>
"""

import json
import random
import sys
from pathlib import Path

from tools.protocols import BENCHMARK, DG_TARGETS, XD_SOURCE
from tools.results.runlog import RunKey


def write_log(run_dir, correct=None, total=1000, name="log.txt", epochs=2):
    """A Dassl-style log in `run_dir`; with `correct`, it ends in a result block
    (as a finished run), without, it stops mid-training (as an interrupted one)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = ["Setting fixed seed: 1", "Loading trainer: CoOp", "Loading dataset: DescribableTextures"]
    for epoch in range(1, epochs + 1):
        lines.append(
            f"epoch [{epoch}/{epochs}] batch [5/5] time 0.101 (0.120) data 0.001 (0.010) "
            f"loss 1.2345 (1.3456) acc 56.2500 (50.0000) lr 2.0000e-03 eta 0:00:01"
        )
    if correct is not None:
        acc = 100.0 * correct / total
        lines += [
            f"Checkpoint saved to {run_dir}/prompt_learner/model.pth.tar-{epochs}",
            "Finished training",
            "Deploy the last-epoch model",
            "Evaluate on the *test* set",
            "=> result",
            f"* total: {total:,}",
            f"* correct: {correct:,}",
            f"* accuracy: {acc:.1f}%",
            f"* error: {100 - acc:.1f}%",
            f"* macro_f1: {acc - 0.3:.1f}%",
            "Elapsed: 0:00:42",
        ]
    (run_dir / name).write_text("\n".join(lines) + "\n")
    return run_dir / name


def write_expert_stats(run_dir, shares, epochs=2, name="expert_stats.json"):
    """A MoCoOp-style expert_stats.json: one train record per epoch, one test record
    after the last, all with selection shares `shares`."""
    names = [f"group{i}" for i in range(len(shares))]
    records = [
        {
            "epoch": e,
            "split": split,
            "count": 100,
            "selection_share": list(shares),
            "mean_weight": list(shares),
        }
        for e, split in [(e, "train") for e in range(1, epochs + 1)] + [(epochs, "test")]
    ]
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"names": names, "top_k": 2, "records": records}))
    return path


# Invented centres (not any paper's numbers): base and new accuracy per benchmark dataset, and the
# accuracy on each DG target.
_DEMO_CENTRES = {
    "imagenet": (75, 68),
    "caltech101": (97, 93),
    "oxford_pets": (94, 96),
    "stanford_cars": (72, 72),
    "oxford_flowers": (94, 72),
    "food101": (89, 90),
    "fgvc_aircraft": (33, 30),
    "sun397": (79, 74),
    "dtd": (78, 53),
    "eurosat": (87, 62),
    "ucf101": (83, 71),
}
_DEMO_DG = {"imagenetv2": 64, "imagenet_sketch": 47, "imagenet_a": 49, "imagenet_r": 76}
# (trainer, config, accuracy gain, whether its runs write expert statistics)
_DEMO_METHODS = (("CoOp", "vit_b16_ep50", 0.0, False), ("MoCoOp", "paper_vit_b16_ep25", 1.5, True))


def write_demo(root, seed=0):
    """The whole benchmark for CoOp and MoCoOp (base-to-new, few-shot, cross-dataset
    and DG, MoCoOp expert statistics), except one interrupted run and one absent run."""
    rng = random.Random(seed)
    root = Path(root)

    def run(protocol, part, dataset, shots, trainer, config, s, acc):
        path = root / RunKey(protocol, part, dataset, shots, trainer, config).path(s)
        acc = min(99.5, acc + rng.gauss(0, 0.6))
        write_log(path, round(10 * acc))
        if routes[trainer]:
            raw = [rng.uniform(0.5, 1.5) for _ in range(4)]
            write_expert_stats(path, [r / sum(raw) for r in raw])  # shares sum to 1, as RoutingStats writes

    routes = {trainer: experts for trainer, _, _, experts in _DEMO_METHODS}
    for trainer, config, gain, _ in _DEMO_METHODS:
        for d in BENCHMARK:
            base, new = _DEMO_CENTRES[d]
            for s in (1, 2, 3):
                run("base2new", "train_base", d, 16, trainer, config, s, base + gain)
                run("base2new", "test_new", d, 16, trainer, config, s, new + 2 * gain)
                for k in (1, 2, 4, 8, 16):
                    run("fewshot", "", d, k, trainer, config, s, (base + new) / 2 - 12 + 3 * k**0.5 + gain)
                run(
                    "xd",
                    "train" if d == XD_SOURCE else "test",
                    d,
                    16,
                    trainer,
                    config,
                    s,
                    new - 4 + gain / 3,
                )
            for d in DG_TARGETS:
                for s in (1, 2, 3):
                    run("xd", "test", d, 16, trainer, config, s, _DEMO_DG[d] + gain / 3)
    # An interrupted evaluation (a newer log without a result block) and an absent seed.
    write_log(
        root / "base2new/test_new/eurosat/shots_16/MoCoOp/paper_vit_b16_ep25/seed3",
        name="log.txt-2024-05-01-12-00-00",
    )
    for log in (root / "fewshot/dtd/shots_8/CoOp/vit_b16_ep50/seed3").iterdir():
        log.rename(log.with_name(log.name + ".moved"))


if __name__ == "__main__":
    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        sys.exit("usage: python -m tools.results.synthetic <new output root> (must not exist yet)")
    write_demo(sys.argv[1])
