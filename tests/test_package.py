"""The library as users install it: `pip install .` gives `clipprompt` with its runtime
dependencies declared, and an exported classifier loads from it in another directory, without
the repository, Dassl or yacs, and predicts what the trained model predicts."""

import json
import shutil
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

RUNTIME = {"torch", "torchvision", "openai-clip", "setuptools", "numpy", "pillow", "safetensors"}
EXTRAS = {"open-clip": {"open-clip-torch", "transformers"}}  # optional: open_clip backbones
LOAD = """
import json, sys
sys.modules["dassl"] = sys.modules["yacs"] = None  # neither may be imported
import torch, clipprompt
from clipprompt.exported import load_exported
classifier = load_exported(sys.argv[1], backbone=sys.argv[2])
images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
logits = classifier.logits(classifier.encode_image(images))
print(json.dumps({"module": clipprompt.__file__, "logits": logits.tolist()}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install` of a copy of the package's sources into a folder of its own."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(Path(ROOT) / name, source / name)
    shutil.copytree(
        Path(ROOT) / "clipprompt", source / "clipprompt", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    return target


def test_install_declares_the_runtime_dependencies(installed):
    (info,) = installed.glob("clipprompt-*.dist-info")
    metadata = Parser().parsestr((info / "METADATA").read_text())

    def name(line):
        return line.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()

    lines = metadata.get_all("Requires-Dist")
    assert {name(line) for line in lines if ";" not in line} == RUNTIME
    for extra, names in EXTRAS.items():
        assert {name(line) for line in lines if f'extra == "{extra}"' in line} == names
    assert set(metadata.get_all("Provides-Extra")) == set(EXTRAS)
    assert {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")} == {"clipprompt"}
    assert (installed / "clipprompt" / "methods" / "mocoop.py").is_file()


def test_exported_classifier_loads_from_the_installed_package_elsewhere(installed, tiny_clip_path, tmp_path):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    from tests.saved_runs import saved_run
    from tests.test_export import CLASSES, tiny_cfg
    from tools.export.write import main as export_main

    # MoCoOp's release preset: routed experts, a text bias and trained image LayerNorms.
    cfg = tiny_cfg(tiny_clip_path, "MoCoOp", "configs/trainers/MoCoOp/release_vit_b16_ep25.yaml")
    trainer = saved_run(cfg, str(tmp_path / "run"), CLASSES)
    path = tmp_path / "mocoop.safetensors"
    export_main(["--model-dir", str(tmp_path / "run"), "--out", str(path)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, str(path), tiny_clip_path],
        check=False,
        cwd=elsewhere,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["module"].startswith(str(installed))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = trainer.model_inference(images)
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-5, rtol=1e-5)
