"""tools.plots: the Base/New/H bars (values against the runs' logs), the per-class routing
figures (from files RoutingStats writes), and the titles of average panels."""

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tools.protocols import BENCHMARK
from tools.results import plots
from tools.results.cells import Average, Collector
from tools.results.fewshot import fewshot_grids
from tools.results.runlog import RunKey, discover
from tools.results.stats import harmonic
from tools.results.synthetic import write_log
from trainers.runs.routing_stats import RoutingStats

NAMES = ["a photo of a {}.", "itap of a {}.", "art of the {}."]


def finished(root, protocol, part, dataset, seed, correct, trainer="CoOp", config="c4", shots=16):
    run = root / RunKey(protocol, part, dataset, shots, trainer, config).path(seed)
    write_log(run, correct, total=1000)
    return run


def test_average_titles_count_the_averaged_datasets():
    full = Average(70.0, 11, 11, True)
    assert plots.average_title([full, full]) == "Average over 11 datasets"
    assert plots.average_title([full, Average(70.0, 9, 11, True)]) == "Average over 9–11 of 11 datasets"
    assert plots.average_title([Average(70.0, 10, 11, True)] * 2) == "Average over 10 of 11 datasets"
    # Every dataset, but a seed missing somewhere: not "over 11 datasets" without qualification.
    assert plots.average_title([full, Average(70.0, 11, 11, False)]) == "Average over 11 of 11 datasets"
    assert plots.average_title([]) == "Average: no dataset has results"


def test_fewshot_average_panel_says_over_how_many(tmp_path):
    for seed in (1, 2, 3):
        finished(tmp_path, "fewshot", "", "dtd", seed, 500, shots=1)
        finished(tmp_path, "fewshot", "", "eurosat", seed, 600, shots=1)
    runs, _ = discover(tmp_path)
    grids = fewshot_grids(runs, [1, 2, 3], Collector(runs))
    fig, ax = plt.subplots()
    plots._average_panel(ax, grids, [1])
    assert ax.get_title() == f"Average over 2 of {len(BENCHMARK)} datasets"
    plt.close(fig)


def b2n_tree(root):
    """CoOp on DTD (seeds 1-3) and EuroSAT (seed 3 of new missing), MoCoOp on DTD, and a
    dataset of a user's own (not averaged); accuracies in 0.1 %."""
    acc = {}
    for trainer, gain in (("CoOp", 0), ("MoCoOp", 30)):
        for d, (base, new) in (("dtd", (700, 500)), ("eurosat", (800, 600)), ("my_birds", (900, 850))):
            if trainer == "MoCoOp" and d != "dtd":
                continue
            for seed in (1, 2, 3):
                b, n = base + gain + 7 * seed, new + gain - 11 * seed
                finished(root, "base2new", "train_base", d, seed, b, trainer)
                if not (d == "eurosat" and seed == 3):
                    finished(root, "base2new", "test_new", d, seed, n, trainer)
                acc[trainer, d, seed] = (b / 10, n / 10)
    return acc


def test_base2new_values_are_those_of_the_logs(tmp_path):
    acc = b2n_tree(tmp_path)
    runs, _ = discover(tmp_path)
    results = plots.base2new_results(runs, [1, 2, 3])
    assert list(results) == [16] and list(results[16]) == ["CoOp / c4", "MoCoOp / c4"]
    coop = results[16]["CoOp / c4"]
    assert set(coop) == {"dtd", "eurosat", "my_birds"} and set(results[16]["MoCoOp / c4"]) == {"dtd"}
    for d, seeds in (("dtd", (1, 2, 3)), ("eurosat", (1, 2))):
        base = sum(acc["CoOp", d, s][0] for s in (1, 2, 3)) / 3
        new = sum(acc["CoOp", d, s][1] for s in seeds) / len(seeds)
        values, stds, complete = coop[d]
        assert values == pytest.approx([base, new, harmonic(base, new)])
        per_seed_h = [harmonic(*acc["CoOp", d, s]) for s in seeds]
        mean_h = sum(per_seed_h) / len(seeds)
        std_h = (sum((h - mean_h) ** 2 for h in per_seed_h) / (len(seeds) - 1)) ** 0.5
        assert stds[0] == pytest.approx(0.7) and stds[2] == pytest.approx(std_h)
        assert complete == (d == "dtd")
    values, average = plots._benchmark_average(coop)  # DTD and EuroSAT; my_birds is not averaged
    assert values[0] == pytest.approx((coop["dtd"][0][0] + coop["eurosat"][0][0]) / 2)
    assert values[2] == pytest.approx(harmonic(values[0], values[1]))
    assert (average.count, average.total, average.complete) == (2, len(BENCHMARK), False)


def test_bars_are_drawn_per_trainer_with_their_values(tmp_path):
    colours = {"CoOp / c4": "C0", "MoCoOp / c4": "C1"}
    fig, ax = plt.subplots()
    values = {"CoOp / c4": [70.0, 50.0, 58.3], "MoCoOp / c4": [73.0, 53.0, 61.4]}
    stds = {"CoOp / c4": [1.0, 2.0, 1.5], "MoCoOp / c4": [0.5, 0.5, 0.5]}
    plots._bars(ax, colours, values, stds, {"CoOp / c4": True, "MoCoOp / c4": False})
    bars = ax.patches
    assert [b.get_height() for b in bars] == values["CoOp / c4"] + values["MoCoOp / c4"]
    assert [b.get_hatch() or "" for b in bars] == [""] * 3 + ["///"] * 3  # MoCoOp misses seeds
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Base", "New", "H"]
    assert ax.get_ylim()[0] == 40  # 10 below the lowest bar's decade: differences stay visible
    plt.close(fig)

    b2n_tree(tmp_path / "tree")
    out = tmp_path / "png"
    plots.main([str(tmp_path / "tree"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["base2new_shots16.png"]
    assert (out / "base2new_shots16.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def routing_file(run, classnames, seed):
    """expert_stats.json as a MoCoOp evaluation writes it: labels 0 and 1 only."""
    stats = RoutingStats(NAMES, 2, classnames)
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(3, generator=generator)[:2] for _ in range(8)])
    stats.update(index, torch.full((8, 2), 0.5))
    stats.close(2, "train")
    stats.update(index, torch.full((8, 2), 0.5), torch.tensor([0, 1] * 4))
    stats.close(2, "test")
    stats.write(str(run), "expert_stats")
    return stats.records[-1]["per_class"]["selection_share"]


def test_per_class_routing_figure_from_routing_stats_files(tmp_path):
    classes = ["cat", "dog", "owl"]
    shares = []
    for seed in (1, 2):
        run = tmp_path / RunKey("base2new", "test_new", "dtd", 16, "MoCoOp", "c4").path(seed)
        run.mkdir(parents=True)
        shares.append(routing_file(run, classes, seed))
    names, classnames, first, split, epoch = plots.read_per_class(run / "expert_stats.json")
    assert (names, classnames, split, epoch, first[2]) == (NAMES, classes, "test", 2, None)
    mean = plots._seed_mean(shares)
    assert mean[2] is None
    assert mean[0] == pytest.approx([(a + b) / 2 for a, b in zip(shares[0][0], shares[1][0])])

    out = tmp_path / "png"
    plots.main([str(tmp_path), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "expert_stats_base2new_test_new_shots16_MoCoOp_c4.png",
        "expert_stats_per_class_base2new_test_new_shots16_MoCoOp_c4_dtd.png",
    ]

    data = json.loads((run / "expert_stats.json").read_text())
    data["classnames"] = classes[:2]
    (run / "expert_stats.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="do not match its 2 classes and 3 names"):
        plots.read_per_class(run / "expert_stats.json")
