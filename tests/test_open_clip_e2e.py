"""open_clip backbones through the entry points users run, in subprocesses (tiny random models
from JSON configs, tests/open_clip_models.py):

- `train.py --eval-only` of zero-shot CLIP counts as many correct test images as open_clip itself
  (`open_clip.create_model`, `open_clip.get_tokenizer`, `encode_image` / `encode_text`, its logit
  scale and bias) on the same images, whose logits the run's model gives image by image (fp32,
  1e-5 of their scale), for a causal model with LayerScale and a SigLIP-style one;
- a CoOp run trained by train.py on the LayerScale model: predict.py reproduces its evaluation
  image by image, tools.interpret reads its context in the model's vocabulary, and its exported
  classifier (`python -m tools.export`) gives the trainer's logits and records the backbone
  (library, model, weights, fingerprint, architecture).
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

from clipprompt.exported import load_exported, read_exported
from tests.e2e import PETS, TINY_OPTS, run_train
from tests.test_predict import (
    check_against_evaluation,
    evaluated_trainer,
    logged_result,
    read_jsonl,
    run_predict,
)
from tools.export.write import main as export_main
from tools.interpret import build_run_model, interpret

pytestmark = pytest.mark.e2e
ZEROSHOT = "configs/trainers/ZeroshotCLIP/vit_b16.yaml"
TEMPLATE = "a photo of a {}, a type of pet."  # configs/datasets/oxford_pets.yaml's
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def open_clips_own(spec, pets_root):
    """{test image path: zero-shot logits} and the number of correct test images, computed by
    open_clip alone: its model and tokenizer from the JSON config and the weights file, the test
    split's images through the run's test transform (resize, centre crop, CLIP's normalisation),
    CoOp's class names (underscores as spaces) in the dataset's template."""
    import open_clip

    open_clip.add_model_config(spec.config)
    arch = os.path.splitext(os.path.basename(spec.config))[0]
    model = open_clip.create_model(arch, pretrained=spec.weights).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    folder = os.path.join(pets_root, "oxford_pets")
    with open(os.path.join(folder, "split_zhou_OxfordPets.json")) as f:
        test = json.load(f)["test"]
    names = {label: name.replace("_", " ") for _, label, name in test}
    preprocess = transforms.Compose(
        [
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    images = torch.stack(
        [preprocess(Image.open(os.path.join(folder, "images", p)).convert("RGB")) for p, _, _ in test]
    )
    with torch.no_grad():
        text = F.normalize(
            model.encode_text(tokenizer([TEMPLATE.format(names[c]) for c in sorted(names)])), dim=-1
        )
        logits = model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ text.t()
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
    labels = torch.tensor([label for _, label, _ in test])
    paths = [os.path.join(folder, "images", p) for p, _, _ in test]
    return dict(zip(paths, logits)), (len(test), int((logits.argmax(dim=1) == labels).sum()))


@pytest.mark.parametrize("kind", ["layerscale", "siglip"])
def test_zero_shot_accuracy_through_train_py_equals_open_clips_own(kind, tiny_open_clip, pets, tmp_path):
    spec, _ = tiny_open_clip(kind)
    out = str(tmp_path / "zeroshot")
    run_train(
        "--eval-only", "--trainer", "ZeroshotCLIP", "--config-file", ZEROSHOT, "--root", pets,
        "--dataset-config-file", PETS, "--output-dir", out, *spec.opts_for_reference_path(), *TINY_OPTS,
    )  # fmt: skip
    theirs, result = open_clips_own(spec, pets)
    assert logged_result(out) == result
    trainer = evaluated_trainer(out)  # and image by image, as the run evaluated them
    with torch.no_grad():
        for batch in trainer.test_loader:
            for path, logits in zip(batch["impath"], trainer.model_inference(batch["img"])):
                expected = theirs[path]
                assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max(), path


def test_a_trained_run_predicts_and_exports_as_it_evaluates(tiny_open_clip, pets, tmp_path):
    spec, _ = tiny_open_clip("layerscale")
    run = str(tmp_path / "coop")
    run_train(
        "--seed", "1", "--trainer", "CoOp", "--config-file", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml",
        "--root", pets, "--dataset-config-file", PETS, "--output-dir", run, *spec.opts(), *TINY_OPTS,
        "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2",
    )  # fmt: skip
    trainer = evaluated_trainer(run)
    out = tmp_path / "preds.jsonl"
    run_predict("--model-dir", run, "--output", out, *[d.impath for d in trainer.dm.dataset.test])
    check_against_evaluation(read_jsonl(out), trainer, run)

    exported = str(tmp_path / "coop.safetensors")
    export_main(["--model-dir", run, "--out", exported, "--device", "cpu"])
    backbone = read_exported(exported)[1]["backbone"]
    # The weights file by its name and its path from the exported file (no folder of this machine).
    keys = ("library", "name", "weights", "relative_path", "fingerprint")
    assert {k: backbone[k] for k in keys} == {
        "library": "open_clip",
        "name": spec.name,
        "weights": os.path.basename(spec.weights),
        "relative_path": os.path.relpath(spec.weights, tmp_path),
        "fingerprint": trainer.backbone_fingerprint,
    }
    with open(spec.config, encoding="utf-8") as f:
        assert backbone["architecture"] == json.load(f)
    trainer_for_words, _ = build_run_model(run)  # tools.interpret: words of the model's vocabulary
    report = interpret(trainer_for_words, 2)
    assert report["tokenizer"] == "CLIP BPE" and report["vocabulary_size"] == 49408
    assert all(len(v["cosine"]) == 2 for p in report["prompts"] for v in p["vectors"])
    classifier = load_exported(exported)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = trainer.model_inference(images)
        torch.testing.assert_close(
            classifier.logits(classifier.encode_image(images)), expected, atol=1e-5, rtol=1e-5
        )
