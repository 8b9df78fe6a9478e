"""The command lines agree with one another: every entry point names itself as it is run (its
prog), every flag and positional argument has help text, the seed lists of the tools take
`--seeds 1 2 3` (and the older quoted "1 2 3"), and no entry point prints the pkg_resources
warning of openai-clip or wilds."""

import argparse
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# How users run each entry point: `python -m <module>` or `python <script>`.
MODULES = [
    "tools.results", "tools.plots", "tools.sweep", "tools.interpret", "tools.export", "tools.benchmark",
    "tools.demo_world", "tools.pretrain_tiny_clip", "tools.demo_routing", "tools.protocols", "tools.demo.table",
]  # fmt: skip
SCRIPTS = ["train.py", "predict.py"]


def test_every_entry_point_is_listed():
    """`python -m tools.<name>` entry points: tools/<name>.py with a main guard, tools/<name>/__main__.py."""
    tools = Path(ROOT) / "tools"
    found = {f"tools.{p.stem}" for p in tools.glob("*.py") if '__name__ == "__main__"' in p.read_text()}
    found |= {f"tools.{p.parent.name}" for p in tools.glob("*/__main__.py")}
    assert found <= set(MODULES), f"entry points without a check here: {sorted(found - set(MODULES))}"


class Captured(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def parser_of(entry, monkeypatch):
    """The ArgumentParser an entry point builds, taken when it parses its arguments."""

    def capture(self, *args, **kwargs):
        raise Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [entry])
    try:
        if entry.endswith(".py"):
            runpy.run_path(os.path.join(ROOT, entry), run_name="__main__")
        else:
            runpy.run_module(entry, run_name="__main__", alter_sys=False)
    except Captured as got:
        return got.parser
    raise AssertionError(f"{entry} parsed no arguments")


def undocumented(parser, prefix=""):
    """Flags and positional arguments of `parser` (and its sub-commands) without help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += undocumented(sub, f"{prefix}{name} ")
            continue
        if not (action.help and action.help.strip()):
            missing.append(prefix + (action.option_strings[-1] if action.option_strings else action.dest))
    return missing


# run_module warns that the module was imported before (by another test): it runs it again anyway.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
@pytest.mark.parametrize("entry", MODULES + SCRIPTS)
def test_prog_and_help_of_every_flag(entry, monkeypatch):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    parser = parser_of(entry, monkeypatch)
    assert parser.prog == (f"python {entry}" if entry.endswith(".py") else f"python -m {entry}")
    assert undocumented(parser) == []


@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
@pytest.mark.parametrize("entry", ["tools.results", "tools.plots", "tools.demo.table"])
def test_seeds_as_words_or_one_quoted_word(entry, monkeypatch):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    parser = parser_of(entry, monkeypatch)
    monkeypatch.undo()
    positional = ["out"] if entry != "tools.demo.table" else []
    for words in (["1", "2", "3"], ["1 2 3"], ["1", "2 3"]):
        assert parser.parse_args([*positional, "--seeds", *words]).seeds == [1, 2, 3]
    assert parser.parse_args(positional).seeds == [1, 2, 3]
    with pytest.raises(SystemExit):
        parser.parse_args([*positional, "--seeds", "1", "two"])


@pytest.mark.parametrize("entry", ["import tools", "import predict", "import train"])
def test_no_pkg_resources_warning_from_an_entry_point(entry):
    """What every entry point imports first installs the filters before Dassl, wilds and clip
    are imported; other warnings stay visible."""
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    code = (
        f"{entry}\n"
        "import threading, warnings\n"
        "import dassl.engine, clip\n"
        "for t in threading.enumerate():\n"  # wilds' version check runs in a thread
        "    if t is not threading.current_thread(): t.join()\n"
        "warnings.warn('pkg_resources is deprecated as an API', UserWarning)\n"
        "warnings.warn('another warning stays visible')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert "pkg_resources" not in proc.stderr and "Failed to check" not in proc.stderr
    assert "another warning stays visible" in proc.stderr


def test_configs_named_in_the_docs_exist():
    """`Trainer / config` (tables) and `Trainer:config` (sweep commands) in README.md and docs/ name
    configs/trainers/<Trainer>/<config>.yaml; `tiny` is the scratch config of the sweep test that
    docs/SWEEPS.md measures, which says so."""
    import re

    names = "|".join(sorted(os.listdir(Path(ROOT) / "configs" / "trainers"), key=len, reverse=True))
    # A Slurm job name (`base2new:CoOp+MoCoOp:train`) joins trainers with "+": not a config.
    pattern = re.compile(rf"(?<![+\w])({names})(?: / |:)([A-Za-z0-9_+]+)")
    missing = []
    for doc in [Path(ROOT) / "README.md", *sorted((Path(ROOT) / "docs").glob("*.md"))]:
        for trainer, config in pattern.findall(doc.read_text(encoding="utf-8")):
            path = Path(ROOT) / "configs" / "trainers" / trainer / f"{config}.yaml"
            if not path.is_file() and not (doc.name == "SWEEPS.md" and config == "tiny"):
                missing.append(f"{doc.name}: {trainer} / {config}")
    assert missing == []
