"""tools.demo.table: README's demo table against the demo's output tree."""

import os

import pytest

from tests.conftest import ROOT
from tools.demo import table
from tools.results.runlog import LAYOUTS
from tools.results.synthetic import write_log

README = """\
# Demo

<!-- demo-table:start -->
| trainer | config | what | Base | New | H |
|---|---|---|---|---|---|
| CoOp | demo | one soft prompt | 72.00 ± 2.00 | 61.00 ± 1.00 | 66.05 ± 1.43 |
| MoPD | demo | distillation | 1.00 ± 0.00 | 1.00 ± 0.00 | 1.00 ± 0.00 |
<!-- demo-table:end -->

Text after the table.
"""


def demo_runs(root, trainer, base, new):
    """train_base / test_new runs of seeds 1 2 3 with these accuracies (percent of 1000 images)."""
    for part, accs in (("train_base", base), ("test_new", new)):
        for seed, acc in enumerate(accs, start=1):
            run = (
                root
                / LAYOUTS["base2new", part]
                / "demo_world"
                / "shots_16"
                / trainer
                / "demo"
                / f"seed{seed}"
            )
            write_log(run, correct=round(acc * 10))


@pytest.fixture
def tree(tmp_path):
    demo_runs(tmp_path / "output", "CoOp", (70, 72, 74), (60, 61, 62))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return tmp_path / "output", readme


def check(output, readme, *extra):
    return table.main(["--output", str(output), "--readme", str(readme), *extra])


def test_matching_rows_pass_and_rows_without_runs_are_listed(tree, capsys):
    output, readme = tree
    assert check(output, readme) == 0
    out = capsys.readouterr().out
    assert "Not checked (no complete runs for seeds 1 2 3" in out and "MoPD / demo" in out
    assert "matches" in out and "(1 rows checked)" in out


def test_a_stale_cell_fails_and_write_updates_only_measured_rows(tree, capsys):
    output, readme = tree
    readme.write_text(README.replace("61.00 ± 1.00", "61.50 ± 1.00"))
    assert check(output, readme) == 1
    assert "CoOp / demo New: README '61.50 ± 1.00', output '61.00 ± 1.00'" in capsys.readouterr().out
    assert check(output, readme, "--write") == 0
    assert readme.read_text() == README  # the MoPD row and the text around the table unchanged


def test_incomplete_seeds_are_not_compared(tree, capsys):
    output, readme = tree
    assert check(output, readme, "--seeds", "1 2 3 4") == 0
    assert "(0 rows checked)" in capsys.readouterr().out


def test_a_readme_without_markers_is_an_error(tree):
    output, readme = tree
    readme.write_text("# no table\n")
    with pytest.raises(SystemExit, match="no demo table between"):
        check(output, readme)


def test_the_repository_readme_has_a_row_for_every_demo_run_the_docs_name():
    """README's own table parses, and each row names a config that scripts/demo.sh can run:
    the five trainers' `demo` and MoCoOp's two ablations, then other trainers' `demo` (and the
    zero-shot and CoOp references on the ViT demo CLIP, `demo_vit`)."""
    readme = os.path.join(ROOT, "README.md")
    with open(readme, encoding="utf-8") as f:
        _, rows = table.table_rows(f.read(), readme)
    pairs = [(trainer, config) for _, (trainer, config, *_) in rows]
    assert pairs[:7] == [
        *((t, "demo") for t in ("ZeroshotCLIP", "CoOp", "KgCoOp", "MoCoOp", "MoPD")),
        ("MoCoOp", "demo_moe"),
        ("MoCoOp", "demo_router_tau007"),
    ]
    assert {config for _, config in pairs[7:]} <= {"demo", "demo_vit"} and ("LASP", "demo") in pairs[7:]
    for trainer, config in pairs:
        assert os.path.isfile(os.path.join(ROOT, "configs", "trainers", trainer, f"{config}.yaml"))


def test_every_demo_run_is_deterministic():
    """The table is reproduced digit for digit only if every run repeats bit for bit: the demo
    configs set DETERMINISTIC (one intra-op thread on a CPU, whatever the core count)."""
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    import trainers

    found = []
    for trainer in sorted(os.listdir(os.path.join(ROOT, "configs", "trainers"))):
        folder = os.path.join(ROOT, "configs", "trainers", trainer)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.startswith("demo") and name.endswith(".yaml"):
                cfg = trainers.make_cfg(
                    trainer, "configs/datasets/demo_world.yaml", os.path.join(folder, name), []
                )
                found.append((trainer, name, cfg.DETERMINISTIC))
    # Every trainer with a demo row has a demo config (the README table's rows name them).
    assert {"ZeroshotCLIP", "CoOp", "KgCoOp", "MoCoOp", "MoPD"} <= {t for t, *_ in found}, found
    assert all(deterministic for *_, deterministic in found), found
