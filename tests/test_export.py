"""tools.export and clipprompt.exported: for every trainer the exported classifier gives the
trainer's model_inference logits (fp32, 1e-5) and routing, also in a process that cannot import
Dassl or yacs; its preprocessing is Dassl's test transform; a CLIP of another fingerprint is
refused, as are files that are not exported classifiers."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.clip_loading import build_tiny_clip, save_clip_state_dict
from clipprompt.exported import ExportError, load_exported, read_exported, save_exported
from tests.conftest import ROOT
from tests.e2e import PETS, TINY_OPTS
from tests.saved_runs import saved_run
from tools.export.write import main as export_main

CLASSES = ["abyssinian", "school bus", "globe_thistle", "red panda", "dog"]
# name: (trainer, config, extra options); each is exported from a saved run whose learnable
# tensors were moved away from their initial values.
CASES = {
    "ZeroshotCLIP": ("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/vit_b16_ensemble.yaml", ()),
    "CoOp": ("CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", ()),
    "CoOp-CSC-middle": (
        "CoOp",
        "configs/trainers/CoOp/vit_b16_ep50.yaml",
        ("TRAINER.COOP.CSC", True, "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle", "TRAINER.COOP.N_CTX", 4),
    ),
    "CoCoOp": (
        "CoCoOp",
        "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
        ("TRAINER.TEXT_ENCODER.CHUNK_SIZE", 7),
    ),
    "KgCoOp": ("KgCoOp", "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", ()),
    "MoCoOp-paper": (
        "MoCoOp",
        "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml",
        ("TRAINER.MOCOOP.CLS_TEMPERATURE", 0.1),
    ),
    "MoCoOp-release": ("MoCoOp", "configs/trainers/MoCoOp/release_vit_b16_ep25.yaml", ()),
    "MoPD": ("MoPD", "configs/trainers/MoPD/vit_b16_c4_bs128.yaml", ()),
    "LASP-paper": ("LASP", "configs/trainers/LASP/paper_vit_b16_ep10_batch1.yaml", ()),
    "ProGrad": ("ProGrad", "configs/trainers/ProGrad/vit_b16_ep50.yaml", ()),
    "IVLP": (
        "IVLP",
        "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
        ("TRAINER.IVLP.PROMPT_DEPTH_TEXT", 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION", 2),
    ),
    "MaPLe": (
        "MaPLe",
        "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        ("TRAINER.MAPLE.PROMPT_DEPTH", 2),
    ),
    "PromptSRC": (
        "PromptSRC",
        "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 2),
    ),
    "PLOT": ("PLOT", "configs/trainers/PLOT/rn50.yaml", ("TRAINER.PLOT.GLOBAL_LOGITS", True)),
    "LinearProbeCLIP": ("LinearProbeCLIP", "configs/trainers/LinearProbeCLIP/rn50.yaml", ()),
}
KINDS = {
    "CoCoOp": "conditional",
    "MoCoOp-paper": "experts",
    "MoCoOp-release": "experts",
    "PLOT": "optimal_transport",
    "LinearProbeCLIP": "linear_head",
}
KINDS |= {name: "prompted_image" for name in ("IVLP", "MaPLe", "PromptSRC")}

# Loads every exported file where Dassl, yacs and the repository's Dassl packages cannot be
# imported, and saves the logits and routing of the given images.
WITHOUT_DASSL = """
import sys

for name in ("dassl", "yacs", "trainers", "datasets", "tools"):
    sys.modules[name] = None  # `import name` now raises ImportError
import torch

from clipprompt.exported import load_exported

cases = torch.load(sys.argv[1], weights_only=True)
results = {}
for name, (path, images) in cases.items():
    classifier = load_exported(path)
    v = classifier.encode_image(images)
    routing = classifier.route(v)
    results[name] = (classifier.logits(v), None if routing is None else routing.index)
try:
    import dassl  # noqa: F401
except ImportError:
    torch.save(results, sys.argv[2])
"""


def tiny_cfg(clip_path, trainer, config, opts=()):
    return trainers.make_cfg(trainer, PETS, config, ["MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS, *opts])


def images(seed=0, n=6):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_clip_path):
    """{case: (trainer, exported file)}: each case saved as a run and exported by the command line
    (ZeroshotCLIP, without a checkpoint, with --classnames)."""
    root = tmp_path_factory.mktemp("exports")
    shutil.copy(tiny_clip_path, root)  # the CLIP file next to the exported ones: they load anywhere
    names = root / "classnames.txt"
    names.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    result = {}
    for name, (trainer_name, config, opts) in CASES.items():
        run = str(root / name)
        trainer = saved_run(tiny_cfg(tiny_clip_path, trainer_name, config, opts), run, CLASSES)
        out = str(root / f"{name}.safetensors")
        export_main(
            ["--model-dir", run, "--out", out, *(["--classnames", str(names)] * (name == "ZeroshotCLIP"))]
        )
        result[name] = (trainer, out, run)
    return result


@pytest.mark.parametrize("name", list(CASES))
def test_exported_logits_equal_the_trainers(name, exports):
    trainer, path, _ = exports[name]
    classifier = load_exported(path)
    image = images()
    with torch.no_grad():
        expected = trainer.model_inference(image)
        _, routing = trainer.model.classify(image)
        v = classifier.encode_image(image)
        torch.testing.assert_close(v, trainer.model.encode_image(image), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(classifier.logits(v), expected, atol=1e-5, rtol=1e-5)
        exported_routing = classifier.route(v)
    assert classifier.kind == KINDS.get(name, "text_features")
    assert classifier.classnames == CLASSES
    assert classifier.routing_names == trainer.model.routing_names
    assert (routing is None) == (exported_routing is None)
    if routing is not None:
        assert torch.equal(exported_routing.index, routing.index)
        torch.testing.assert_close(exported_routing.weight, routing.weight, atol=1e-6, rtol=1e-6)

    tensors, metadata = read_exported(path)
    learned = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert {n[len("learned.") :] for n in tensors if n.startswith("learned.")} == set(learned)
    for n, p in learned.items():
        assert torch.equal(tensors["learned." + n], p.detach().float())
    assert metadata["trainer"] == trainer.cfg.TRAINER.NAME
    assert metadata["backbone"] == {
        "library": "openai",
        "name": os.path.basename(trainer.cfg.MODEL.BACKBONE.NAME),
        "weights": "",
        "model_config": "",
        "fingerprint": trainer.backbone_fingerprint,
        "relative_path": os.path.relpath(trainer.cfg.MODEL.BACKBONE.NAME, os.path.dirname(path)),
    }
    assert metadata["logit_bias"] is None  # OpenAI's CLIP has none
    # CLIP's scale (the tiny CLIP's is its initial 1 / 0.07), or MoCoOp's 1 / CLS_TEMPERATURE, set to 0.1.
    scale = 10.0 if name == "MoCoOp-paper" else trainer.model.logit_scale.exp().item()
    assert metadata["logit_scale"] == pytest.approx(scale, rel=1e-6)


def test_templates_and_routing_in_the_metadata(exports):
    meta = {name: read_exported(path)[1] for name, (_, path, _) in exports.items()}
    assert len(meta["ZeroshotCLIP"]["templates"]) == 8  # CLIP's 7 and the dataset template
    assert meta["KgCoOp"]["templates"] == ["a photo of a {}, a type of pet."]
    assert meta["CoOp"]["templates"] == [] and meta["CoOp"]["routing"] is None
    mopd = exports["MoPD"][0].model
    assert meta["MoPD"]["routing"] == {
        "kind": "teacher",
        "candidates": list(mopd.routing_names),
        "top_k": mopd.top_k,
    }
    assert meta["MoCoOp-release"]["routing"]["kind"] == "expert"
    assert meta["CoCoOp"]["prompt"] == {"n_ctx": 4, "meta_net_reduction": 16}
    assert meta["CoOp"]["preprocessing"] == {
        "resize": 32,
        "crop": [32, 32],
        "interpolation": "bicubic",
        "normalize": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
        "instance_norm": False,
    }


@pytest.mark.e2e
def test_loading_needs_neither_dassl_nor_yacs(exports, tmp_path):
    cases = {name: (path, images(seed=1)) for name, (_, path, _) in exports.items()}
    torch.save(cases, tmp_path / "cases.pt")
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DASSL, str(tmp_path / "cases.pt"), str(tmp_path / "results.pt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(tmp_path / "results.pt", weights_only=True)
    assert set(results) == set(CASES)
    for name, (trainer, _, _) in exports.items():
        with torch.no_grad():
            expected, routing = trainer.model.classify(images(seed=1))
        logits, index = results[name]
        torch.testing.assert_close(logits, expected.float(), atol=1e-5, rtol=1e-5)
        assert (index is None) == (routing is None)
        if routing is not None:
            assert torch.equal(index, routing.index)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_is_dassls_test_transform(interpolation, tiny_clip_path, tmp_path):
    from dassl.data.transforms import build_transform

    opts = [
        "INPUT.INTERPOLATION",
        interpolation,
        "INPUT.TRANSFORMS",
        ["random_flip", "normalize", "instance_norm"],
    ]
    cfg = tiny_cfg(tiny_clip_path, "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", opts)
    saved_run(cfg, tmp_path / "run", CLASSES)
    export_main(["--model-dir", str(tmp_path / "run"), "--out", str(tmp_path / "c.safetensors")])
    classifier = load_exported(str(tmp_path / "c.safetensors"), backbone=tiny_clip_path)
    pixels = torch.randint(0, 256, (37, 50, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy())
    assert torch.equal(classifier.preprocess(image), build_transform(cfg, is_train=False)(image))


def test_predict_on_files_equals_the_trainers_probabilities(exports, tmp_path):
    from dassl.data.transforms import build_transform
    from dassl.utils import read_image

    trainer, path, _ = exports["MoCoOp-release"]
    paths = []
    for k in range(3):
        pixels = torch.randint(
            0, 256, (40 + 3 * k, 44, 3), generator=torch.Generator().manual_seed(k), dtype=torch.uint8
        )
        paths.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(pixels.numpy()).save(paths[-1])
    transform = build_transform(trainer.cfg, is_train=False)
    with torch.no_grad():
        probs = trainer.model_inference(torch.stack([transform(read_image(p)) for p in paths])).softmax(-1)
    predictions = load_exported(path).predict(paths, topk=2)
    for p, prediction in zip(probs, predictions, strict=True):
        top = p.topk(2)
        assert [t["label"] for t in prediction["top"]] == top.indices.tolist()
        assert [t["class"] for t in prediction["top"]] == [CLASSES[i] for i in top.indices.tolist()]
        assert [t["probability"] for t in prediction["top"]] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert len(prediction["routing"]) == 2


def test_another_clip_is_refused_and_a_moved_one_is_not(exports, tiny_clip_path, tmp_path):
    _, path, _ = exports["CoOp"]
    other = save_clip_state_dict(build_tiny_clip(seed=1), str(tmp_path / "other.pt"))
    recorded = read_exported(path)[1]["backbone"]["fingerprint"]
    with pytest.raises(
        ExportError, match=f"fingerprint {recorded}, but '{other}' has fingerprint [0-9a-f]{{16}}"
    ):
        load_exported(path, backbone=other)
    moved = shutil.copy(tiny_clip_path, tmp_path / "moved.pt")
    assert load_exported(path, backbone=str(moved)).classnames == CLASSES


def test_the_clip_file_is_found_by_its_path_relative_to_the_export(
    exports, tiny_clip_path, tmp_path, monkeypatch
):
    """An export in another folder than its CLIP file (as README's `my_birds.safetensors` beside
    `assets/`) finds the file through the path recorded relative to it, from any current folder;
    copied where that path leads nowhere, the error names every place it looked."""
    _, _, run = exports["CoOp"]
    out = tmp_path / "exports" / "coop.safetensors"
    out.parent.mkdir()
    export_main(["--model-dir", run, "--out", str(out)])
    recorded = read_exported(str(out))[1]["backbone"]
    assert not os.path.isabs(recorded["relative_path"])
    assert (out.parent / recorded["relative_path"]).resolve() == Path(tiny_clip_path).resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_exported(str(out), download_root=str(elsewhere)).classnames == CLASSES
    deeper = elsewhere / "a" / "b"
    deeper.mkdir(parents=True)
    copied = shutil.copy(out, deeper / "coop.safetensors")
    with pytest.raises(ExportError, match="which is not at .*a/b/.*, .*elsewhere/tiny"):
        load_exported(str(copied), download_root=str(elsewhere))


def test_files_that_are_not_exported_classifiers(tmp_path, monkeypatch):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExportError, match="Cannot read .*junk.safetensors as a safetensors file"):
        read_exported(str(tmp_path / "junk.safetensors"))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ExportError, match="is not a classifier written by `python -m tools.export`"):
        read_exported(str(tmp_path / "plain.safetensors"))
    from clipprompt import exported

    with monkeypatch.context() as patch:
        patch.setattr(exported, "VERSION", 2)
        save_exported(str(tmp_path / "future.safetensors"), {"x": torch.zeros(2)}, {"kind": "text_features"})
    with pytest.raises(ExportError, match="is version 2 of kind 'text_features'; this code reads version 1"):
        read_exported(str(tmp_path / "future.safetensors"))


def test_class_specific_context_is_exported_only_for_its_classes(exports, tmp_path):
    _, _, run = exports["CoOp-CSC-middle"]
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nowl\nfox\nemu\n", encoding="utf-8")
    out = tmp_path / "csc.safetensors"
    with pytest.raises(SystemExit, match="class names differ .the tensors are class-specific.: label 0"):
        export_main(["--model-dir", run, "--out", str(out), "--classnames", str(names)])
    assert not out.exists()
    export_main(["--model-dir", run, "--out", str(out)])
    with pytest.raises(SystemExit):
        export_main(["--model-dir", run, "--out", str(out)])  # exists: --overwrite replaces it
    export_main(["--model-dir", run, "--out", str(out), "--overwrite"])


def rewritten(path, out, change):
    """A copy of the exported file `path` at `out` after `change(tensors, metadata)`."""
    tensors, metadata = read_exported(path)
    change(tensors, metadata)
    metadata = {k: v for k, v in metadata.items() if k not in ("format", "version")}
    return save_exported(str(out), tensors, metadata)


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        (
            "CoOp",
            lambda t, m: t.update(text_features=t["text_features"][:4]),
            r"tensor 'text_features' has shape \[4, 32\], but its metadata \(5 classes\) and the CLIP's 32-wide features need \[5, 32\]",
        ),
        (
            "CoOp",
            lambda t, m: t.update(text_features=t["text_features"][:, :16]),
            r"'text_features' has shape \[5, 16\].*need \[5, 32\]",
        ),
        (
            "CoOp",
            lambda t, m: m["classnames"].append("emu"),
            r"'text_features' has shape \[5, 32\], but its metadata \(6 classes\)",
        ),
        (
            "CoOp",
            lambda t, m: t.pop("logit_scale"),
            "lacks the tensor 'logit_scale' that a classifier of kind 'text_features' needs",
        ),
        ("MoCoOp-paper", lambda t, m: t.pop("expert_features"), "lacks the tensor 'expert_features'"),
        (
            "MoCoOp-paper",
            lambda t, m: m["routing"]["candidates"].pop(),
            r"'router.weight' has shape \[6, 32\].*5 routed candidates",
        ),
        (
            "CoCoOp",
            lambda t, m: t.update({"prompt.slot_ids": t["prompt.slot_ids"][1:]}),
            r"'prompt.slot_ids' has shape \[4, \d+\].*need \[5, \*\]",
        ),
        ("CoOp", lambda t, m: m.update(classnames="cat"), "classnames must be a non-empty list of names"),
    ],
)
def test_tensors_that_contradict_their_metadata_are_refused(exports, tmp_path, case, change, message):
    _, path, _ = exports[case]
    out = rewritten(path, tmp_path / "changed.safetensors", change)
    with pytest.raises(ExportError, match=message):
        load_exported(out, backbone=exports[case][0].cfg.MODEL.BACKBONE.NAME)


def test_an_export_loads_in_another_folder_and_records_no_folder(
    exports, tiny_clip_path, tmp_path, monkeypatch
):
    """The file and its CLIP copied elsewhere load from a third folder (the CLIP found next to
    the file, as recorded by its name); without the CLIP the error says where it looked and how
    to name it; the metadata holds no absolute path."""
    trainer, path, _ = exports["MoCoOp-release"]
    metadata = read_exported(path)[1]
    assert not any(isinstance(v, str) and v.startswith("/") for v in json.dumps(metadata).split('"'))
    elsewhere, third = tmp_path / "elsewhere", tmp_path / "third"
    elsewhere.mkdir(), third.mkdir()
    moved = shutil.copy(path, elsewhere / "mine.safetensors")
    monkeypatch.chdir(third)
    with pytest.raises(
        ExportError, match=r"was trained on the CLIP file '[^']+' .* pass backbone='<path of that file>'"
    ):
        load_exported(str(moved), download_root=str(third))
    shutil.copy(tiny_clip_path, elsewhere)
    classifier = load_exported(str(moved), download_root=str(third))
    with torch.no_grad():
        torch.testing.assert_close(
            classifier.logits(classifier.encode_image(images())),
            trainer.model_inference(images()),
            atol=1e-5,
            rtol=1e-5,
        )
