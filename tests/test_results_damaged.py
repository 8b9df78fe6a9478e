"""Result blocks whose numbers are unreadable, missing or contradict each other: the run is
flagged (a cell built from fewer seeds, the problem listed with the missing runs), its numbers
never replaced by zero or guessed."""

import pytest

from tests.test_results import finished, run_dir, tables
from tools.results import report
from tools.results.runlog import read_run
from tools.results.synthetic import write_log


def damage(log, old, new):
    text = log.read_text()
    assert old in text
    log.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("* correct: 300\n", "* correct: 3\x00\x00\n", "its * correct: line is unreadable"),
        ("* correct: 300\n", "* corr\ufffdct: 300\n", "it has no * correct: line"),
        ("* total: 1,000\n", "", "it has no * total: line"),
        ("* accuracy: 30.0%\n", "* accuracy: 3?.0%\n", "its * accuracy: line is unreadable"),
        (
            "* accuracy: 30.0%\n",
            "* accuracy: 35.0%\n",
            "correct / total is 30.00% but its accuracy line says 35.0%",
        ),
        (
            "* correct: 300\n",
            "* correct: 3,000\n",
            "correct / total is 300.00% but its accuracy line says 30.0%",
        ),
    ],
)
def test_a_damaged_result_block_is_unreadable_not_zero(tmp_path, old, new, problem):
    log = write_log(tmp_path / "run", correct=300)
    damage(log, old, new)
    state = read_run(tmp_path / "run")
    assert not state.finished and state.accuracy is None
    assert state.problem() == f"unreadable result: the last result block of log.txt: {problem}"


def test_a_damaged_seed_is_flagged_in_the_table_and_the_missing_runs(tmp_path):
    for seed, acc in ((1, 30), (2, 32), (3, 34)):
        finished(tmp_path, "fewshot", "", "caltech101", seed, acc, shots=1)
    damage(
        run_dir(tmp_path, "fewshot", "", "caltech101", 2, shots=1) / "log.txt",
        "* correct: 320\n",
        "* correct: ##\n",
    )
    sections, missing = report.build_report(tmp_path)
    (table,) = tables(sections, "Few-shot")
    assert table.rows[0] == ["Caltech101", "32.00 ± 2.83 !"]  # seeds 1 and 3, flagged; not (30 + 0 + 34) / 3
    assert (
        "fewshot/caltech101/shots_1/CoOp/vit_b16/seed2",
        "unreadable result: the last result block of log.txt: its * correct: line is unreadable",
    ) in missing
