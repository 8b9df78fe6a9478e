"""tools.results and tools.plots on generated output trees with Dassl-format logs.

The expected numbers were worked out by hand (and the t quantiles checked against
scipy where it is installed): e.g. accuracies 70, 72, 74 give 72.00 ± 2.00 and the
95% interval 72 ± 4.3027 * 2 / sqrt(3) = [67.03, 76.97].
"""

import csv
import json
import statistics

import pytest

from tools.protocols import BENCHMARK, DISPLAY
from tools.results import fewshot, paper, report
from tools.results.runlog import LAYOUTS, last_result, read_run
from tools.results.stats import t975
from tools.results.synthetic import write_expert_stats, write_log

UNKNOWN_SHOTS = "Shots not checked for {} run(s): no data_summary.json (runs of an older version)."
OTHERS = "ImageNet, OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397, EuroSAT, UCF101"


def run_dir(root, protocol, part, dataset, seed, trainer="CoOp", config="vit_b16", shots=16):
    return root / LAYOUTS[protocol, part] / dataset / f"shots_{shots}" / trainer / config / f"seed{seed}"


def finished(root, protocol, part, dataset, seed, acc, **kw):
    """A finished run whose accuracy is `acc` (tenths of a percent of 1000 images)."""
    return write_log(run_dir(root, protocol, part, dataset, seed, **kw), correct=round(acc * 10))


def tables(sections, heading):
    return next(s for s in sections if s.heading.startswith(heading)).tables


@pytest.fixture
def b2n_tree(tmp_path):
    for seed, acc in ((1, 70), (2, 72), (3, 74)):
        finished(tmp_path, "base2new", "train_base", "caltech101", seed, acc)
    for seed, acc in ((1, 60), (2, 61), (3, 62)):
        finished(tmp_path, "base2new", "test_new", "caltech101", seed, acc)
    # Seed 2's first start logged 10%; the newer log (a re-run) is the one that counts.
    write_log(run_dir(tmp_path, "base2new", "train_base", "caltech101", 2), correct=100)
    write_log(
        run_dir(tmp_path, "base2new", "train_base", "caltech101", 2), 720, name="log.txt-2024-01-02-03-04-05"
    )
    for seed, acc in ((1, 80), (2, 81), (3, 82)):
        finished(tmp_path, "base2new", "train_base", "dtd", seed, acc)
    for seed, acc in ((1, 50), (2, 52)):
        finished(tmp_path, "base2new", "test_new", "dtd", seed, acc)
    write_log(run_dir(tmp_path, "base2new", "test_new", "dtd", 3))  # interrupted: no result block
    finished(tmp_path, "base2new", "test_new", "eurosat", 1, 90)  # new without base
    return tmp_path


def test_base2new_table(b2n_tree):
    sections, missing = report.build_report(b2n_tree)
    (table,) = tables(sections, "Base-to-new")
    assert table.title == "CoOp / vit_b16 (16 shots)"
    rows = {r[0]: r for r in table.rows}
    assert rows["Caltech101"] == [
        "Caltech101",
        "1,2,3",
        "72.00 ± 2.00 [67.03, 76.97]",
        "61.00 ± 1.00 [58.52, 63.48]",
        "66.05 ± 1.43 [62.50, 69.59]",  # H of the means; spread of the per-seed H
        "",
    ]
    assert rows["DTD"] == [
        "DTD",
        "base 1,2,3; new 1,2",
        "81.00 ± 1.00 [78.52, 83.48]",
        "51.00 ± 1.41 [38.29, 63.71]",  # t(1) = 12.7062
        "62.59 ± 1.27 [51.00, 73.87]",
        "new missing seeds 3",
    ]
    assert rows["EuroSAT"] == [
        "EuroSAT",
        "base none; new 1",
        "—",
        "90.00",
        "—",
        "base missing seeds 1,2,3; new missing seeds 2,3; new without base: seeds 1",
    ]
    # H of the averaged Base (76.5) and New (56.0), not the mean of the H column (64.32);
    # EuroSAT has no Base, so it is not averaged and the row says so.
    assert rows["Average"] == [
        "Average",
        "",
        "76.50",
        "56.00",
        "64.66",
        f"over 2/11 datasets, without {OTHERS}; includes flagged datasets",
    ]
    assert list(rows) == ["Caltech101", "DTD", "EuroSAT", "Average"]
    assert (
        "base2new/test_new/dtd/shots_16/CoOp/vit_b16/seed3",
        "unfinished: no result block in log.txt",
    ) in missing
    assert (
        "base2new/train_base/eurosat/shots_16/CoOp/vit_b16/seed*",
        "no runs; test_new has a result without it (new without base)",
    ) in missing
    assert ("base2new/test_new/eurosat/shots_16/CoOp/vit_b16/seed2", "no run directory") in missing
    assert ("base2new/*/imagenet/shots_16/CoOp/vit_b16/seed*", "no runs for this dataset") in missing
    assert len(missing) == 1 + 1 + 2 + 8  # dtd seed 3, eurosat base, eurosat new 2 and 3, 8 datasets


def test_markdown_layout(tmp_path):
    """The printed report of a one-dataset tree, character for character."""
    for seed, (base, new) in enumerate(((70, 60), (72, 61), (74, 62)), start=1):
        finished(tmp_path, "base2new", "train_base", "caltech101", seed, base)
        finished(tmp_path, "base2new", "test_new", "caltech101", seed, new)
    assert report.render("out", *report.build_report(tmp_path)) == GOLDEN_REPORT


GOLDEN_REPORT = """\
# Results: out

## Base-to-new generalisation

Cells: mean ± sample std over seeds [95% t-interval of the mean]. H = 2·B·N/(B+N) of the mean Base and mean New (the CoOp-family convention); its ± and interval are those of the per-seed H (Base and New of the same seed). Average: mean over the 11 datasets of the per-dataset means, its H from the averaged Base and New.

### CoOp / vit_b16 (16 shots)

| Dataset    | Seeds   | Base                        | New                         | H                           | Flags                                                                                                                              |
|------------|---------|-----------------------------|-----------------------------|-----------------------------|------------------------------------------------------------------------------------------------------------------------------------|
| Caltech101 | 1,2,3   | 72.00 ± 2.00 [67.03, 76.97] | 61.00 ± 1.00 [58.52, 63.48] | 66.05 ± 1.43 [62.50, 69.59] |                                                                                                                                    |
| Average    |         | 72.00                       | 61.00                       | 66.05                       | over 1/11 datasets, without ImageNet, OxfordPets, StanfordCars, OxfordFlowers, Food101, FGVCAircraft, SUN397, DTD, EuroSAT, UCF101 |

Shots not checked for 3 run(s): no data_summary.json (runs of an older version).

## Missing or unfinished runs (10)

| Run                                                   | Problem                  |
|-------------------------------------------------------|--------------------------|
| base2new/*/dtd/shots_16/CoOp/vit_b16/seed*            | no runs for this dataset |
| base2new/*/eurosat/shots_16/CoOp/vit_b16/seed*        | no runs for this dataset |
| base2new/*/fgvc_aircraft/shots_16/CoOp/vit_b16/seed*  | no runs for this dataset |
| base2new/*/food101/shots_16/CoOp/vit_b16/seed*        | no runs for this dataset |
| base2new/*/imagenet/shots_16/CoOp/vit_b16/seed*       | no runs for this dataset |
| base2new/*/oxford_flowers/shots_16/CoOp/vit_b16/seed* | no runs for this dataset |
| base2new/*/oxford_pets/shots_16/CoOp/vit_b16/seed*    | no runs for this dataset |
| base2new/*/stanford_cars/shots_16/CoOp/vit_b16/seed*  | no runs for this dataset |
| base2new/*/sun397/shots_16/CoOp/vit_b16/seed*         | no runs for this dataset |
| base2new/*/ucf101/shots_16/CoOp/vit_b16/seed*         | no runs for this dataset |
"""


def test_newest_log_and_last_block(tmp_path):
    d = tmp_path / "run"
    write_log(d, correct=500)
    write_log(d, correct=800, name="log.txt-2024-01-02-00-00-00")
    write_log(d, correct=100, name="log.txt-2024-01-01-00-00-00")
    (d / "log.txt-notes").write_text("=> result\n* accuracy: 1.0%\n")  # not a Dassl log name
    assert read_run(d).accuracy == 80.0 and read_run(d).log.name == "log.txt-2024-01-02-00-00-00"
    # A newer start that has not finished makes the run unfinished, whatever older logs say.
    write_log(d, name="log.txt-2024-01-03-00-00-00")
    state = read_run(d)
    assert (
        not state.finished and state.problem() == "unfinished: no result block in log.txt-2024-01-03-00-00-00"
    )

    text = (
        "=> result\n* total: 100\n* correct: 10\n* accuracy: 10.0%\n"
        "epoch [2/2] ...\n"
        "=> result\n* total: 10,000\n* correct: 7,123\n* accuracy: 71.2%\n* error: 28.8%\n"
        "* macro_f1: 70.9%\nElapsed: 0:00:01\n"
    )
    assert last_result(text) == {
        "total": 10000,
        "correct": 7123,
        "accuracy": 71.2,
        "error": 28.8,
        "macro_f1": 70.9,
    }
    assert last_result(text + "=> result\n* total: 5\n") is None  # the last block was cut off
    assert last_result("no result here\n") is None
    (tmp_path / "exact").mkdir()
    (tmp_path / "exact" / "log.txt").write_text(text)
    assert read_run(tmp_path / "exact").accuracy == pytest.approx(
        71.23
    )  # correct/total, not the rounded 71.2


def test_fewshot_table(tmp_path):
    for seed in (1, 2, 3):
        finished(tmp_path, "fewshot", "", "caltech101", seed, 49 + seed, shots=1)
        finished(tmp_path, "fewshot", "", "caltech101", seed, 59 + seed, shots=2)
    for seed in (1, 2):
        finished(tmp_path, "fewshot", "", "dtd", seed, 39 + seed, shots=1)
    sections, missing = report.build_report(tmp_path)
    (table,) = tables(sections, "Few-shot")
    assert table.headers == ["Dataset", "1 shot", "2 shots"]
    assert table.rows == [
        ["Caltech101", "51.00 ± 1.00", "61.00 ± 1.00"],
        ["DTD", "40.50 ± 0.71 !", "—"],
        ["Average", "45.75 (2/11) !", "61.00 (1/11)"],
    ]
    assert ("fewshot/dtd/shots_1/CoOp/vit_b16/seed3", "no run directory") in missing
    assert ("fewshot/dtd/shots_2/CoOp/vit_b16/seed*", "no runs") in missing
    assert ("fewshot/sun397/shots_*/CoOp/vit_b16/seed*", "no runs for this dataset") in missing
    assert len(missing) == 2 + 9


COOP_CURVE = ("CoOp", ["vit_b16_ep50", "vit_b16_ep100", "vit_b16_ep200"])


def test_fewshot_curve_merges_configs_by_shot_count(tmp_path):
    """CoOp's protocol runs 1 shot with ep50, 2 and 4 with ep100, 8 and 16 with ep200."""
    for shots, config in [
        (1, "vit_b16_ep50"),
        (2, "vit_b16_ep100"),
        (4, "vit_b16_ep100"),
        (16, "vit_b16_ep200"),
    ]:
        for seed in (1, 2, 3):
            finished(tmp_path, "fewshot", "", "dtd", seed, 40 + shots + seed, shots=shots, config=config)
    finished(tmp_path, "fewshot", "", "dtd", 1, 30, shots=1, trainer="MoCoOp", config="c4")
    sections, missing = report.build_report(tmp_path, declared=[1, 2, 3], curves=[COOP_CURVE])
    coop, mocoop = tables(sections, "Few-shot")
    assert coop.title == "CoOp / vit_b16_ep50+vit_b16_ep100+vit_b16_ep200"
    assert coop.headers == ["Dataset", "1 shot", "2 shots", "4 shots", "16 shots"]
    assert coop.rows[0] == ["DTD", "43.00 ± 1.00", "44.00 ± 1.00", "46.00 ± 1.00", "58.00 ± 1.00"]
    assert mocoop.title == "MoCoOp / c4"
    assert ("fewshot/dtd/shots_1/MoCoOp/c4/seed2", "no run directory") in missing
    assert not [m for m in missing if "CoOp/vit_b16" in m[0] and "shots_*" not in m[0]]

    # Without the curve, each config is its own table.
    sections, _ = report.build_report(tmp_path, declared=[1, 2, 3])
    assert [t.title for t in tables(sections, "Few-shot")] == [
        "CoOp / vit_b16_ep100",
        "CoOp / vit_b16_ep200",
        "CoOp / vit_b16_ep50",
        "MoCoOp / c4",
    ]


def test_fewshot_curve_errors(tmp_path):
    finished(tmp_path, "fewshot", "", "dtd", 1, 40, shots=1, config="vit_b16_ep50")
    finished(tmp_path, "fewshot", "", "caltech101", 1, 40, shots=1, config="vit_b16_ep100")
    with pytest.raises(SystemExit, match="1-shot runs exist under both vit_b16_ep100 and vit_b16_ep50"):
        report.build_report(tmp_path, declared=[1], curves=[COOP_CURVE])
    for spec in ("CoOp", "CoOp=vit_b16_ep50", "=a+b", "CoOp=a+a"):
        with pytest.raises(SystemExit, match="expected Trainer=config1\\+config2"):
            fewshot.parse_curve(spec)
    assert fewshot.parse_curve("CoOp=a+b") == ("CoOp", ["a", "b"])
    _, missing = report.build_report(tmp_path, declared=[1], curves=[("KgCoOp", ["a", "b"])])
    assert ("fewshot/*/shots_*/KgCoOp/{a,b}/seed*", "no runs") in missing


def test_xd_and_dg_tables(tmp_path):
    for seed in (1, 2):
        finished(tmp_path, "xd", "train", "imagenet", seed, 69.5 + seed)
        finished(tmp_path, "xd", "test", "caltech101", seed, 89.5 + seed)
        finished(tmp_path, "xd", "test", "imagenet_a", seed, 49.5 + seed)
    for seed in (1, 2, 3):
        finished(tmp_path, "xd", "test", "dtd", seed, 39 + seed)
    sections, missing = report.build_report(tmp_path)
    (xd,) = tables(sections, "Cross-dataset")
    (dg,) = tables(sections, "Domain generalisation")
    assert xd.headers[:4] == ["Method", "Shots", "ImageNet", "Caltech101"] and xd.headers[-1] == "Average"
    # Seed 3 exists for dtd only, so it is expected everywhere: 2-seed cells are flagged.
    assert xd.rows == [
        ["CoOp / vit_b16", "16", "71.00 ± 0.71 !", "91.00 ± 0.71 !"]
        + ["—"] * 6
        + ["41.00 ± 1.00", "—", "—", "66.00 (2/10) !"]
    ]
    assert dg.rows == [
        ["CoOp / vit_b16", "16", "71.00 ± 0.71 !", "—", "—", "51.00 ± 0.71 !", "—", "51.00 (1/4) !"]
    ]
    assert (
        "xd/train/imagenet/shots_16/CoOp/vit_b16/seed3",
        "no run directory; test results exist without it",
    ) in missing
    assert ("xd/test/imagenet_a/shots_16/CoOp/vit_b16/seed3", "no run directory") in missing
    assert ("xd/test/sun397/shots_16/CoOp/vit_b16/seed*", "no runs") in missing
    assert len(missing) == 1 + 2 + 11  # train seed 3, caltech101/imagenet_a seed 3, 11 targets without runs


def test_paper_columns(tmp_path):
    for seed in (1, 2, 3):
        for trainer in ("ZeroshotCLIP", "KgCoOp", "MoPD", "Other"):
            finished(tmp_path, "base2new", "train_base", "imagenet", seed, 72, trainer=trainer)
            finished(tmp_path, "base2new", "test_new", "imagenet", seed, 68, trainer=trainer)
    finished(tmp_path, "xd", "train", "imagenet", 1, 71, trainer="KgCoOp")
    finished(tmp_path, "xd", "test", "imagenet_r", 1, 76, trainer="KgCoOp")
    sections, _ = report.build_report(tmp_path, declared=[1], paper=paper.load())
    by_trainer = {t.title.split(" /")[0]: t for t in tables(sections, "Base-to-new")}

    clip = by_trainer["ZeroshotCLIP"]  # the paper's CLIP
    assert clip.headers == [
        "Dataset",
        "Seeds",
        "Base",
        "New",
        "H",
        "Paper Base",
        "Paper New",
        "Paper H",
        "Flags",
    ]
    assert clip.rows[0][:2] + clip.rows[0][5:8] == ["ImageNet", "1,2,3", "72.43", "68.14", "70.22"]
    # Printed CLIP Average 70.25 / 74.22 / 71.57; the 11 printed rows average 69.34 / 74.22.
    assert clip.rows[-1][5:8] == ["69.34†", "74.22", "71.70†"]
    assert "Base / New / H 69.34 / 74.22 / 71.70" in clip.notes[1]  # CLIP's own report agrees

    kg = by_trainer["KgCoOp"]
    # Printed ImageNet H 71.89 is not the harmonic mean of 75.83 and 69.96 (72.78).
    assert kg.rows[0][5:8] == ["75.83", "69.96", "72.78†"]
    # The printed Average (73.63 / 76.90 / 83.22) is garbled; the mean of the 11 rows is shown.
    assert kg.rows[-1][0] == "Average" and kg.rows[-1][5:8] == ["81.64†", "73.61†", "77.41†"]
    assert "ImageNet H 71.89" in kg.notes[0]
    assert "Average base 73.63; Average new 76.90; Average H 83.22" in kg.notes[0]
    assert kg.notes[1] == (
        "Average reported by the KgCoOp paper or its README (`base_to_new_average_anchors`): "
        "Base / New / H 80.73 / 73.60 / 77.00."
    )

    mopd = by_trainer["MoPD"]  # only an average H is published
    assert mopd.rows[0][5:8] == ["—", "—", "—"] and mopd.rows[-1][5:8] == ["—", "—", "77.90"]
    assert by_trainer["Other"].headers[-1] == "Flags" and "Paper Base" not in by_trainer["Other"].headers
    assert by_trainer["Other"].notes == ["Paper: no published numbers for Other.", UNKNOWN_SHOTS.format(3)]

    finished(tmp_path, "base2new", "train_base", "imagenet", 1, 72, shots=4)
    sections, _ = report.build_report(tmp_path, declared=[1], paper=paper.load())
    four_shots = tables(sections, "Base-to-new")[1]  # [0] is the all-trainers summary
    assert four_shots.title == "CoOp / vit_b16 (4 shots)" and "Paper Base" not in four_shots.headers
    assert four_shots.notes == [
        "Paper: the published numbers are for 16 shots; none are shown here.",
        UNKNOWN_SHOTS.format(1),
    ]

    (dg,) = tables(sections, "Domain generalisation")
    # MoCoOp's Table 3 order (ImageNet, -R, -A, -Sketch, -V2) mapped onto this table's columns.
    assert dg.rows[1] == ["KgCoOp (paper)", "16", "71.20", "64.10", "48.97", "50.69", "76.70", "60.11"]
    assert dg.notes and tables(sections, "Cross-dataset")[0].notes


def test_paper_json_is_the_reference_data():
    data = paper.load()
    table = data["mocoop_table1_base_to_new"]
    assert [k for k in table if k != "Average"] == [DISPLAY[d] for d in BENCHMARK]
    assert table["ImageNet"]["MoCoOp"] == {"base": 76.52, "new": 69.2, "H": 72.67}
    assert data["mocoop_table3_domain_generalisation"]["columns"][0] == "ImageNet"


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 29, 30, 35, 50, 100, 200, 1000])
def test_t_quantiles(df):
    scipy_stats = pytest.importorskip(
        "scipy.stats", reason="scipy checks the t table; the tool does not need it"
    )
    assert t975(df) == pytest.approx(float(scipy_stats.t.ppf(0.975, df)), abs=2e-3)


@pytest.mark.e2e
def test_cli_writes_csv(b2n_tree, tmp_path, capsys):
    csv_dir = tmp_path / "csv"
    report.main([str(b2n_tree), "--csv-dir", str(csv_dir)])
    out = capsys.readouterr().out
    assert "## Base-to-new generalisation" in out and "## Missing or unfinished runs (12)" in out
    with open(csv_dir / "base2new.csv") as f:
        rows = {r["dataset"]: r for r in csv.DictReader(f)}
    assert rows["Caltech101"]["base_mean"] == "72.00" and rows["Caltech101"]["base_std"] == "2.00"
    assert (rows["Caltech101"]["base_ci95_low"], rows["Caltech101"]["base_ci95_high"]) == ("67.03", "76.97")
    assert rows["DTD"]["new_seeds"] == "1,2" and rows["DTD"]["flags"] == "new missing seeds 3"
    assert rows["Average"]["H"] == "64.66" and rows["Average"]["datasets"] == "2"
    with open(csv_dir / "missing_runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit, match="no runs under"):
        report.build_report(tmp_path)
    (tmp_path / "fewshot/dtd/shots_1/CoOp/vit_b16/old-seed1").mkdir(parents=True)
    _, missing = report.build_report(tmp_path)
    assert missing == [
        (
            "fewshot/dtd/shots_1/CoOp/vit_b16/old-seed1",
            "not a run directory (expected <dataset>/shots_<K>/<Trainer>/<config>/seed<N>)",
        )
    ]


@pytest.mark.e2e
def test_plots(tmp_path):
    from tools.results import plots
    from tools.results.routing import last_record, read_stats

    for seed in (1, 2, 3):
        for k in (1, 2):
            finished(tmp_path, "fewshot", "", "dtd", seed, 40 + k + seed, shots=k)
            finished(tmp_path, "fewshot", "", "dtd", seed, 50 + k, shots=k, trainer="MoCoOp", config="c4")
        stats = write_expert_stats(
            run_dir(tmp_path, "base2new", "train_base", "dtd", seed, "MoCoOp", "c4"), [0.25] * 4
        )
    # No test record in the last file: its last train record is shown.
    data = json.loads(stats.read_text())
    data["records"] = [r for r in data["records"] if r["split"] == "train"]
    stats.write_text(json.dumps(data))
    record = last_record(read_stats(stats).records)
    assert (record["split"], record["epoch"]) == ("train", 2)
    out = tmp_path / "png"
    plots.main([str(tmp_path), "--out", str(out), "--fewshot-curve", "CoOp=vit_b16+other"])
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "expert_routing_base2new_train_base_dtd_shots16_MoCoOp_c4.png",
        "fewshot.png",
        "fewshot_average.png",
        *[f"training_fewshot_dtd_shots{k}_{tc}.png" for k in (1, 2) for tc in ("CoOp_vit_b16", "MoCoOp_c4")],
    ]
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)

    data["records"][-1]["selection_share"] = [1.0]
    stats.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not match names"):
        read_stats(stats)
    with pytest.raises(SystemExit, match=f"error: {stats}: selection_share of epoch 2 does not match names"):
        plots.main([str(tmp_path), "--out", str(out)])


def test_single_dataset_summary_compares_trainers(tmp_path):
    for seed, (base, new) in zip((1, 2), ((60, 50), (62, 54))):
        for trainer, shift in (("CoOp", 0), ("MoCoOp", 2)):
            finished(tmp_path, "base2new", "train_base", "demo_world", seed, base + shift, trainer=trainer)
            finished(tmp_path, "base2new", "test_new", "demo_world", seed, new + shift, trainer=trainer)
    sections, missing = report.build_report(tmp_path, declared=[1, 2], datasets=["demo_world"])
    summary = tables(sections, "Base-to-new")[0]
    assert summary.title.startswith("All trainers (demo_world")
    coop, mocoop = summary.rows
    assert coop[:4] == ["CoOp / vit_b16 (16 shots)", "1,2", "61.00 ± 1.41", "52.00 ± 2.83"]
    h = [2 * b * n / (b + n) for b, n in ((60, 50), (62, 54))]
    assert coop[4] == f"{2 * 61 * 52 / 113:.2f} ± {statistics.stdev(h):.2f}"
    assert mocoop[2] == "63.00 ± 1.41"
    assert missing == []  # only the listed dataset is expected


def data_summary(log, num_shots=16, short=None, classes=("a", "b", "c", "d")):
    """The data_summary.json train.py writes next to `log`: every class at `num_shots` except `short`."""
    short = short or {}
    counts = {c: short.get(c, num_shots) for c in classes}
    summary = {
        "num_shots": num_shots,
        "effective_shots": min(counts.values()),
        "short_classes": short,
        "train_images_per_class": counts,
    }
    (log.parent / "data_summary.json").write_text(json.dumps(summary))


def test_runs_trained_on_fewer_shots_are_flagged(tmp_path):
    for seed in (1, 2, 3):
        data_summary(
            finished(tmp_path, "base2new", "train_base", "dtd", seed, 70), short={"b": 6} if seed < 3 else {}
        )
        finished(tmp_path, "base2new", "test_new", "dtd", seed, 60)
        data_summary(finished(tmp_path, "base2new", "train_base", "eurosat", seed, 80))
        finished(tmp_path, "base2new", "test_new", "eurosat", seed, 50)
    data_summary(
        finished(tmp_path, "fewshot", "", "dtd", 1, 55, shots=8), num_shots=8, short={"a": 5, "c": 7}
    )
    sections, _ = report.build_report(tmp_path, declared=[1])
    (table,) = tables(sections, "Base-to-new")
    rows = {r[0]: r for r in table.rows}
    assert rows["DTD"][-1] == "fewer shots: seeds 1,2 (1 of 4 classes, min 6)"
    assert rows["EuroSAT"][-1] == ""
    assert rows["Average"][-1].endswith("includes flagged datasets")
    assert table.notes == [
        "DTD, seed 1: fewer training images than NUM_SHOTS for b (6).",
        "DTD, seed 2: fewer training images than NUM_SHOTS for b (6).",
    ]
    records = {r["dataset"]: r for r in next(s for s in sections if s.csv_name == "base2new.csv").csv_rows}
    assert (records["DTD"]["effective_shots_min"], records["DTD"]["short_classes"]) == (6, "b (6)")
    assert (records["EuroSAT"]["effective_shots_min"], records["EuroSAT"]["short_classes"]) == ("", "")
    (few,) = tables(sections, "Few-shot")
    assert few.rows[0] == ["DTD", "55.00 (min 5 shots)"]
    assert few.notes == ["DTD, 8 shots, seed 1: fewer training images than NUM_SHOTS for a (5), c (7)."]


def test_a_users_own_target_alone_is_not_fourteen_missing_runs(tmp_path):
    finished(tmp_path, "xd", "train", "imagenet", 1, 70)
    finished(tmp_path, "xd", "test", "my_birds", 1, 40)
    sections, missing = report.build_report(tmp_path, declared=[1])
    (xd,) = tables(sections, "Cross-dataset")
    assert xd.headers[-2:] == ["my_birds", "Average"]
    assert not [path for path, _ in missing if path.startswith("xd/")]
    finished(tmp_path, "xd", "test", "dtd", 1, 45)  # one of the protocol's targets: all 14 expected
    _, missing = report.build_report(tmp_path, declared=[1])
    assert len([path for path, _ in missing if path.startswith("xd/test/")]) == 13


def test_fewshot_intro_counts_the_datasets_averaged(tmp_path):
    finished(tmp_path, "fewshot", "", "dtd", 1, 55, shots=1)
    sections, _ = report.build_report(tmp_path, declared=[1], datasets=["dtd"])
    intro = next(s for s in sections if s.heading.startswith("Few-shot")).intro
    assert "mean over the 1 datasets, with (k/1)" in intro


def test_the_mocoop_papers_tables_from_one_output_tree(tmp_path):
    """Table 1's methods (base-to-new) and Table 3's (domain generalisation, ProGrad included),
    each trainer's published numbers beside its own row of the all-trainers table."""
    table1 = ("ZeroshotCLIP", "CoOp", "CoCoOp", "LASP", "KgCoOp", "MoCoOp")
    for trainer in table1:
        for d in BENCHMARK:
            finished(tmp_path, "base2new", "train_base", d, 1, 80, trainer=trainer)
            finished(tmp_path, "base2new", "test_new", d, 1, 70, trainer=trainer)
    for trainer in (*table1, "ProGrad"):
        finished(tmp_path, "xd", "train", "imagenet", 1, 70, trainer=trainer)
        finished(tmp_path, "xd", "test", "imagenet_r", 1, 75, trainer=trainer)
    sections, _ = report.build_report(tmp_path, declared=[1], paper=paper.load())

    summary = tables(sections, "Base-to-new")[0]
    assert summary.headers[-3:] == ["Paper Base", "Paper New", "Paper H"]
    by_trainer = {row[0].split(" /")[0]: row for row in summary.rows}
    assert sorted(by_trainer) == sorted(table1)
    # LASP's column of Table 1 is LASP-V; its Average is the mean of the 11 printed rows (Base
    # 83.10, printed 83.18: marked †).
    lasp = [v["LASP-V"] for k, v in paper.load()["mocoop_table1_base_to_new"].items() if k != "Average"]
    mean_base, mean_new = (statistics.fmean(r[k] for r in lasp) for k in ("base", "new"))
    assert by_trainer["LASP"][2:5] == ["80.00", "70.00", "74.67"]
    assert by_trainer["LASP"][5:7] == [f"{mean_base:.2f}†", f"{mean_new:.2f}"]
    lasp_table = next(t for t in tables(sections, "Base-to-new") if t.title.startswith("LASP /"))
    source = "(`base_to_new_average_anchors`): Base / New / H"
    assert lasp_table.notes[1:3] == [
        f"Average reported by the LASP-V paper or its README {source} 83.18 / 76.11 / 79.48.",
        f"Average reported by LASP release README {source} 82.96 / 76.64 / 79.67.",
    ]

    (dg,) = tables(sections, "Domain generalisation")
    published = {row[0]: row[2] for row in dg.rows if row[0].endswith("(paper)")}
    assert published == {
        "CLIP (paper)": "66.73",
        "CoOp (paper)": "71.51",
        "CoCoOp (paper)": "71.02",
        "LASP (re-run by MoCoOp authors) (paper)": "69.49",
        "KgCoOp (paper)": "71.20",
        "MoCoOp (paper)": "70.08",
        "ProGrad (paper)": "72.24",
    }


def test_paper_columns_of_methods_outside_mocoops_tables(tmp_path):
    """MaPLe and PromptSRC: their own papers' Table 1 and DG rows; IVLP: the README average of the
    recipe the table is of."""
    for seed in (1, 2, 3):
        for trainer, config in (
            ("MaPLe", "vit_b16"),
            ("IVLP", "vit_b16_c2_ep20_batch4_4+4ctx"),
            ("IVLP", "demo"),
        ):
            finished(tmp_path, "base2new", "train_base", "dtd", seed, 80, trainer=trainer, config=config)
            finished(tmp_path, "base2new", "test_new", "dtd", seed, 60, trainer=trainer, config=config)
    finished(tmp_path, "xd", "train", "imagenet", 1, 71, trainer="PromptSRC")
    finished(tmp_path, "xd", "test", "imagenet_r", 1, 77, trainer="PromptSRC")
    sections, _ = report.build_report(tmp_path, declared=[1, 2, 3], paper=paper.load())
    by_title = {t.title: t for t in tables(sections, "Base-to-new")}

    maple = by_title["MaPLe / vit_b16 (16 shots)"]
    assert maple.rows[0][0] == "DTD" and maple.rows[0][5:8] == ["80.36", "59.18", "68.16"]
    assert maple.rows[-1][0] == "Average" and maple.rows[-1][5:8] == ["82.28", "75.14", "78.55"]
    assert "MaPLe paper (Khattak et al., CVPR 2023), Table 1" in maple.notes[0]
    ivlp = by_title["IVLP / vit_b16_c2_ep20_batch4_4+4ctx (16 shots)"]
    assert ivlp.rows[0][5:8] == ["—", "—", "—"] and ivlp.rows[-1][5:8] == ["84.21", "71.79", "77.51"]
    assert "Paper Base" not in by_title["IVLP / demo (16 shots)"].headers

    (dg,) = tables(sections, "Domain generalisation")
    assert dg.rows[1] == ["PromptSRC (paper)", "16", "71.27", "64.35", "49.55", "50.90", "77.80", "60.65"]
    data = paper.load()
    for method in ("MaPLe", "PromptSRC"):  # the 11 rows average to the README's numbers
        rows = data["base_to_new_method_papers"][method]["rows"]
        assert list(rows) == [DISPLAY[d] for d in BENCHMARK]
        means = [statistics.fmean(r[k] for r in rows.values()) for k in ("base", "new")]
        assert [round(m, 2) for m in means] == data["base_to_new_average_anchors"][method][:2]
