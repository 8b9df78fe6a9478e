"""The repository's layout rules, read from the source: a method is one module, so the tools
and entry points never decide anything by a trainer's name nor import a method's model, and
the library `clipprompt` stands alone (no Dassl, no yacs, nothing of the training application)."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

ROOT = Path(ROOT)
ENTRY_POINTS = [ROOT / "train.py", ROOT / "predict.py", *sorted((ROOT / "tools").rglob("*.py"))]


def trainer_modules():
    """{module name under trainers/: registered trainer names it defines}."""
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    import trainers

    modules = {}
    for name in trainers.repository_trainers():
        module = trainers.get_trainer_class(name).__module__
        modules.setdefault(module, set()).add(name)
    return modules


def imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def compared_strings(tree):
    """String constants that a comparison (==, !=, in, not in) or a match case tests."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                yield from (
                    i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)
                )
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant):
            yield node.value.value


def test_tools_and_entry_points_name_no_trainer_and_import_no_model():
    modules = trainer_modules()
    names = set().union(*modules.values())
    problems = []
    for path in ENTRY_POINTS:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(ROOT)
        for module in imported_modules(tree):
            if module in modules or module.startswith("clipprompt.methods"):
                problems.append(f"{where} imports {module}")
        problems += [
            f"{where} compares with the trainer name {s!r}" for s in compared_strings(tree) if s in names
        ]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_trainer_dispatch():
    """The rule above fails on the kind of code it forbids."""
    tree = ast.parse(
        "from trainers.mocoop import MixtureCLIP\nif cfg.TRAINER.NAME == 'MoCoOp' or name in ('CoOp',): pass"
    )
    assert "trainers.mocoop" in set(imported_modules(tree))
    assert set(compared_strings(tree)) == {"MoCoOp", "CoOp"}


def test_the_library_imports_nothing_of_the_application():
    forbidden = ("dassl", "yacs", "trainers", "datasets", "tools", "train", "predict")
    problems = []
    for path in sorted((ROOT / "clipprompt").rglob("*.py")):
        for module in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            if module.split(".")[0] in forbidden:
                problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not problems, "\n".join(problems)
