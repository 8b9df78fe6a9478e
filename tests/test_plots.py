"""tools.plots: the Base/New/H bars (values against the runs' logs, zero-shot first, values on the
bars, canvas sized to the panels), the figures of the runs themselves (training curves from the
log, routing per seed with K/G, routing per class) on output trees and on a run's own folder, and
the titles of average panels."""

import json

import matplotlib
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tools.protocols import BENCHMARK
from tools.results import plot_protocols, plot_runs, plots
from tools.results.cells import Average, Collector
from tools.results.epochs import parse_epochs
from tools.results.fewshot import fewshot_grids
from tools.results.rungroups import folder_groups
from tools.results.runlog import RunKey, discover
from tools.results.stats import harmonic
from tools.results.synthetic import write_log
from trainers.runs.routing_stats import RoutingStats

NAMES = ["a photo of a {}.", "itap of a {}.", "art of the {}."]


def finished(root, protocol, part, dataset, seed, correct, trainer="CoOp", config="c4", shots=16):
    run = root / RunKey(protocol, part, dataset, shots, trainer, config).path(seed)
    write_log(run, correct, total=1000)
    return run


def captured_figures(monkeypatch, module):
    """{file name: figure} of what `module` saves, instead of writing PNG files."""
    figures = {}

    def keep(fig, path):
        figures[path.name] = fig
        return path

    monkeypatch.setattr(module, "save", keep)
    return figures


def test_average_titles_count_the_averaged_datasets():
    full = Average(70.0, 11, 11, True)
    title = plot_protocols.average_title
    assert title([full, full]) == "Average over 11 datasets"
    assert title([full, Average(70.0, 9, 11, True)]) == "Average over 9–11 of 11 datasets"
    assert title([Average(70.0, 10, 11, True)] * 2) == "Average over 10 of 11 datasets"
    # Every dataset, but a seed missing somewhere: not "over 11 datasets" without qualification.
    assert title([full, Average(70.0, 11, 11, False)]) == "Average over 11 of 11 datasets"
    assert title([]) == "Average: no dataset has results"


def test_fewshot_average_panel_says_over_how_many(tmp_path):
    for seed in (1, 2, 3):
        finished(tmp_path, "fewshot", "", "dtd", seed, 500, shots=1)
        finished(tmp_path, "fewshot", "", "eurosat", seed, 600, shots=1)
    runs, _ = discover(tmp_path)
    grids = fewshot_grids(runs, [1, 2, 3], Collector(runs))
    fig, ax = plt.subplots()
    plot_protocols._average_panel(ax, grids, [1], {"CoOp / c4": "C0"})
    assert ax.get_title() == f"Average over 2 of {len(BENCHMARK)} datasets"
    plt.close(fig)


def b2n_tree(root, datasets=("dtd", "eurosat", "my_birds")):
    """CoOp on DTD (seeds 1-3) and EuroSAT (seed 3 of new missing), MoCoOp on DTD, and a
    dataset of a user's own (not averaged), zero-shot CLIP on all; accuracies in 0.1 %."""
    acc = {}
    centres = {"dtd": (700, 500), "eurosat": (800, 600), "my_birds": (900, 850)}
    for trainer, gain in (("CoOp", 0), ("MoCoOp", 30), ("ZeroshotCLIP", -40)):
        for d in datasets:
            base, new = centres[d]
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
    results = plot_protocols.base2new_results(runs, [1, 2, 3])
    assert list(results) == [16] and list(results[16]) == ["ZeroshotCLIP / c4", "CoOp / c4", "MoCoOp / c4"]
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
    values, average = plot_protocols._benchmark_average(coop)  # DTD and EuroSAT; my_birds is not averaged
    assert values[0] == pytest.approx((coop["dtd"][0][0] + coop["eurosat"][0][0]) / 2)
    assert values[2] == pytest.approx(harmonic(values[0], values[1]))
    assert (average.count, average.total, average.complete) == (2, len(BENCHMARK), False)


def test_bars_start_at_zero_and_carry_their_values(tmp_path):
    colours = {"ZeroshotCLIP / c4": "C0", "CoOp / c4": "C1", "MoCoOp / c4": "C2"}
    fig, ax = plt.subplots()
    values = {
        "CoOp / c4": [70.0, 50.0, 58.3],
        "MoCoOp / c4": [73.0, 53.0, 61.4],
        "ZeroshotCLIP / c4": [66, 4, 7.5],
    }
    stds = {g: [1.0, 2.0, 1.5] for g in values}
    complete = {"CoOp / c4": True, "MoCoOp / c4": False, "ZeroshotCLIP / c4": True}
    plot_protocols._bars(ax, colours, values, stds, complete)
    bars = ax.patches
    order = ["ZeroshotCLIP / c4", "CoOp / c4", "MoCoOp / c4"]  # the colours' order: zero-shot first
    assert [b.get_height() for b in bars] == [v for g in order for v in values[g]]
    assert [b.get_hatch() or "" for b in bars] == [""] * 6 + ["///"] * 3  # MoCoOp misses seeds
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Base", "New", "H"]
    assert ax.get_ylim() == (0, 100)
    texts = [(t.get_text(), t.get_color()) for t in ax.texts]
    assert [t for t, _ in texts] == [f"{v:.1f}" for g in order for v in values[g]]
    assert texts[1] == ("4.0", "black") and texts[0] == ("66.0", "white")  # short bars: value above
    plt.close(fig)


def test_base2new_figure_canvas_holds_its_panels(tmp_path):
    b2n_tree(tmp_path / "one", datasets=("my_birds",))
    b2n_tree(tmp_path / "three")
    sizes = {}
    for tree in ("one", "three"):
        out = tmp_path / f"png_{tree}"
        plots.main([str(tmp_path / tree), "--out", str(out)])
        names = sorted(p.name for p in out.iterdir())
        assert "base2new_shots16.png" in names and all(n.startswith(("base2new", "training_")) for n in names)
        sizes[tree] = Image.open(out / "base2new_shots16.png").size
    # One panel (the user's dataset, no benchmark average): about one panel wide, not a 4-panel
    # canvas with one panel in its corner; three datasets and the average: two rows of two.
    assert 450 < sizes["one"][0] < 750 and 300 < sizes["one"][1] < 600
    assert sizes["three"][0] < 2.2 * sizes["one"][0] and sizes["three"][1] > 1.7 * sizes["one"][1]


def training_log(run, losses, val=None):
    """A log with an epoch line per entry of `losses` ({term: [value per epoch]}), each epoch
    printed twice (a resumed run's later line wins), validation results per epoch, a test."""
    lines = ["==== train.py start 2024-01-01-00-00-00 ===="]
    epochs = len(next(iter(losses.values())))
    for e in range(1, epochs + 1):
        for wrong in (9.0, 0.0):
            meters = " ".join(
                f"{t} {wrong or v[e - 1]:.4f} ({wrong or v[e - 1]:.4f})" for t, v in losses.items()
            )
            lines.append(
                f"epoch [{e}/{epochs}] batch [5/5] time 0.1 (0.1) data 0.0 (0.0) {meters} lr 1e-03 eta 0:00:01"
            )
        if val:
            lines += [
                "Evaluate on the *val* set",
                "=> result",
                "* total: 200",
                f"* correct: {val[e - 1]}",
                "* accuracy: 1.0%",
            ]
    lines += [
        "Finish training",
        "Evaluate on the *test* set",
        "=> result",
        "* total: 1,000",
        "* correct: 615",
        "* accuracy: 61.5%",
    ]
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.txt").write_text("\n".join(lines) + "\n")


def test_epochs_of_a_log_and_the_training_figure(tmp_path, monkeypatch):
    losses = {
        "loss": [3.0, 2.0, 1.5],
        "loss_cls": [1.0, 0.8, 0.7],
        "loss_text": [2.0, 1.2, 0.8],
        "acc": [40.0, 50.0, 55.0],
    }
    for seed, val in ((1, [100, 120, 130]), (2, None)):
        training_log(tmp_path / f"seed{seed}", losses, val)
    log = parse_epochs((tmp_path / "seed1" / "log.txt").read_text())
    assert log.max_epoch == 3 and log.meters() == ["loss", "loss_cls", "loss_text", "acc", "lr"]
    assert log.series("loss_text") == ([1, 2, 3], [2.0, 1.2, 0.8])
    assert log.evaluation_series("val") == (
        [1, 2, 3],
        [50.0, 60.0, 65.0],
    )  # correct / total, not the rounded line
    assert log.evaluation_series("test") == ([3], [61.5])

    figures = captured_figures(monkeypatch, plot_runs)
    (group,) = folder_groups(tmp_path)
    plot_runs.training_figure(group, tmp_path)
    fig = figures[f"training_{group.stem}.png"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss (weighted sum)", "loss_cls", "loss_text", "accuracy (%)"]
    accuracy = fig.axes[3]
    lines = {(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in accuracy.get_lines()}
    assert ((1, 2, 3), (50.0, 60.0, 65.0)) in lines and ((3,), (61.5,)) in lines
    assert ((1, 2, 3), (40.0, 50.0, 55.0)) in lines
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "seed 1", "seed 2", "training batches (epoch mean)", "validation set", "test set (final model)"
    ]  # fmt: skip


def routing_file(run, classnames, seed, epochs=3):
    """expert_stats.json as a MoCoOp training run writes it: a train record per epoch, then the
    test evaluation with labels 0 and 1 only."""
    stats = RoutingStats(NAMES, 2, classnames)
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(3, generator=generator)[:2] for _ in range(8)])
    for epoch in range(1, epochs + 1):
        stats.update(index[: 4 + epoch], torch.full((4 + epoch, 2), 0.5))
        stats.close(epoch, "train")
    stats.update(index, torch.full((8, 2), 0.5), torch.tensor([0, 1] * 4))
    stats.close(epochs, "test")
    run.mkdir(parents=True, exist_ok=True)
    stats.write(str(run), "expert_stats")
    return stats.records


def test_routing_per_seed_with_the_uniform_share(tmp_path, monkeypatch):
    classes = ["cat", "dog", "owl"]
    records = {}
    for seed in (1, 2):
        run = tmp_path / RunKey("base2new", "train_base", "dtd", 16, "MoCoOp", "c4").path(seed)
        records[seed] = routing_file(run, classes, seed)
        write_log(run, 600)
    figures = captured_figures(monkeypatch, plot_runs)
    plots.main([str(tmp_path), "--out", str(tmp_path / "png")])
    stem = "base2new_train_base_dtd_shots16_MoCoOp_c4"
    assert sorted(figures) == [
        f"expert_routing_{stem}.png", f"expert_routing_per_class_{stem}.png", f"training_{stem}.png"
    ]  # fmt: skip
    fig = figures[f"expert_routing_{stem}.png"]
    bars_1, bars_2, _, epochs_2 = fig.axes
    for ax, seed in ((bars_1, 1), (bars_2, 2)):  # a panel per seed: no mean over seeds
        test = records[seed][-1]
        assert [b.get_width() for b in ax.patches] == pytest.approx(
            [200 * s for s in test["selection_share"]]
        )
        assert ax.get_lines()[0].get_xdata()[0] == pytest.approx(200 / 3)  # K/G dashed
        assert ax.get_title() == f"seed {seed}: test, epoch 3"
    train = [r for r in records[2] if r["split"] == "train"]
    first = epochs_2.get_lines()[0]
    assert list(first.get_xdata()) == [1, 2, 3]
    assert list(first.get_ydata()) == pytest.approx([200 * r["selection_share"][0] for r in train])
    assert "uniform: K/G = 2/3 = 67 %" in [t.get_text() for t in fig.legends[0].get_texts()]

    heatmaps = figures[f"expert_routing_per_class_{stem}.png"]
    image = heatmaps.axes[1].get_images()[0].get_array()  # seed 2
    shares = records[2][-1]["per_class"]["selection_share"]
    assert (
        image[0].tolist() == pytest.approx([200 * s for s in shares[0]]) and image.mask[2].all()
    )  # owl: none


def test_a_run_folder_gets_its_own_figures_and_report(tmp_path, capsys):
    """`python -m tools.plots RUN` and `python -m tools.results RUN` on one run's --output-dir."""
    from tools.results import report

    run = tmp_path / "my_run"
    training_log(run, {"loss": [2.0, 1.0], "acc": [50.0, 70.0]})
    routing_file(run, ["cat", "dog"], 1, epochs=2)
    (run / "data_summary.json").write_text(
        json.dumps({"dataset": "MyBirds", "subsample_classes": "all", "num_shots": 4, "effective_shots": 3,
                    "short_classes": {"dog": 3}, "train_images_per_class": {"cat": 4, "dog": 3}})
    )  # fmt: skip
    plots.main([str(run)])
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "expert_routing_my_run.png", "expert_routing_per_class_my_run.png", "training_my_run.png"
    ]  # fmt: skip
    report.main([str(run), "--csv-dir", str(tmp_path / "tables")])
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| my_run"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["my_run", "61.50", "615 / 1000", "", "2/2", "loss 1.000", "4 (fewest 3)"]
    assert cells[7].startswith("experts (test, epoch 2): ") and "(uniform 67 %)" in cells[7]
    assert (
        "MyBirds, all classes (2), 7 training images (3–4 per class); fewer than 4 shots: dog (3)" in printed
    )
    assert (tmp_path / "tables" / "runs.csv").is_file()
