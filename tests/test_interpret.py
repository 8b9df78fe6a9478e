"""tools.interpret: the nearest CLIP tokens of learned context vectors, per prompt and position.

Runs whose context was set to the token embeddings of known words must give those words at
distance 0 and cosine 1, labelled with the right prompt (expert, class) and position.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")

import trainers
from clipprompt.templates import PromptForm, bpe
from tests.conftest import ROOT
from tests.e2e import CASES, PETS, TINY_OPTS
from tools import interpret

pytestmark = pytest.mark.e2e

WORDS = [
    "dog",
    "cat",
    "bird",
    "fish",
    "red",
    "blue",
    "green",
    "tree",
    "house",
    "car",
    "boat",
    "sun",
    "moon",
    "star",
]
# Experts with context before the class name, after it, and both.
EXPERT_TEMPLATES = ["a photo of a {}, a type of pet.", "{} texture.", "itap of a {}."]


def token_ids(words):
    ids = [bpe(w) for w in words]
    assert all(len(i) == 1 for i in ids), "each word must be one BPE token"
    return [i[0] for i in ids]


def known_table(tiny_clip, words):
    return tiny_clip.token_embedding.weight[token_ids(words)].detach().clone()


def assert_known_word(vector, word):
    nearest, similar = vector["euclidean"], vector["cosine"]
    assert (nearest[0]["text"], nearest[0]["distance"]) == (word, 0.0)
    assert nearest[1]["distance"] > 0
    assert similar[0]["text"] == word and similar[0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert similar[1]["similarity"] < 1 - 1e-3


def read_report(run, epoch):
    with open(os.path.join(run, f"interpret-epoch{epoch}.json"), encoding="utf-8") as f:
        return json.load(f)


def saved_run(cfg, run, classnames=None, table=None):
    """A finished run in `run` without training: config.yaml as train.py writes it and the last
    checkpoint of a trainer whose context table was set to `table`."""
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    trainer = trainers.build_trainer(cfg, classnames) if classnames else trainers.build_trainer(cfg)
    with torch.no_grad():
        trainer.model.prompt_learner.ctx.copy_(table)
    trainer.save_model(cfg.OPTIM.MAX_EPOCH - 1, str(run))
    return trainer


def tiny_opts(clip_path, *extra):
    return ["MODEL.BACKBONE.NAME", clip_path, *TINY_OPTS, *extra]


def test_coop_context_set_to_known_words(base_run, tiny_clip, tmp_path):
    """Through the command line, on a copy of a train.py run whose checkpoint holds the
    embeddings of "an image of my" (CoOp's 4 vectors before the class name)."""
    run = tmp_path / "run"
    shutil.copytree(base_run("CoOp"), run)
    path = run / "prompt_learner" / "model.pth.tar-2"
    ckpt = torch.load(path, weights_only=True)
    words = ["an", "image", "of", "my"]
    ckpt["state_dict"]["prompt_learner.ctx"] = known_table(tiny_clip, words)
    torch.save(ckpt, path)

    proc = subprocess.run(
        [sys.executable, "-m", "tools.interpret", "--model-dir", str(run), "--topk", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_report(run, 2)
    assert (report["trainer"], report["epoch"], report["topk"], report["note"]) == ("CoOp", 2, 3, None)
    (prompt,) = report["prompts"]
    assert (prompt["label"], prompt["template"], prompt["class"]) == ("context", None, None)
    assert prompt["layout"] == "V1 V2 V3 V4 {class} ."
    assert [(v["position"], v["index"]) for v in prompt["vectors"]] == [("before", i) for i in (1, 2, 3, 4)]
    for vector, word in zip(prompt["vectors"], words, strict=True):
        assert_known_word(vector, word)
        assert len(vector["euclidean"]) == len(vector["cosine"]) == 3
    assert "euclidean: an (0.000)" in proc.stdout and "cosine:    image (1.000)" in proc.stdout
    assert f"Written to {run / 'interpret-epoch2.json'}" in proc.stdout


def test_mocoop_experts_before_and_after_the_class_name(tiny_clip, tiny_clip_path, tmp_path, capsys):
    opts = tiny_opts(
        tiny_clip_path,
        "DATASET.PROMPTS.EXPERT_GROUPS",
        [1, 1, 1],
        "DATASET.PROMPTS.EXPERT_TEMPLATES",
        EXPERT_TEMPLATES,
    )
    cfg = trainers.make_cfg("MoCoOp", PETS, "configs/trainers/MoCoOp/paper_vit_b16_ep25.yaml", opts)
    forms = [PromptForm.from_template(t) for t in EXPERT_TEMPLATES]
    assert [(f.n_before, f.n_after) for f in forms] == [(4, 5), (0, 1), (4, 0)]
    run = tmp_path / "run"
    saved_run(cfg, run, ["cat", "dog"], known_table(tiny_clip, WORDS))

    interpret.main(["--model-dir", str(run), "--topk", "2"])
    report = read_report(run, 25)
    assert [(p["label"], p["template"]) for p in report["prompts"]] == [
        (f"expert {g + 1}", t) for g, t in enumerate(EXPERT_TEMPLATES)
    ]
    # The flat table: expert after expert, each with its vectors before the class name first.
    words = iter(WORDS)
    for prompt, form in zip(report["prompts"], forms, strict=True):
        expected = [("before", i + 1) for i in range(form.n_before)]
        expected += [("after", i + 1) for i in range(form.n_after)]
        assert [(v["position"], v["index"]) for v in prompt["vectors"]] == expected
        for vector in prompt["vectors"]:
            assert_known_word(vector, next(words))
    assert next(words, None) is None
    assert [p["layout"] for p in report["prompts"]] == [
        "V1 V2 V3 V4 {class} V5 V6 V7 V8 V9 .",
        "{class} V1 .",
        "V1 V2 V3 V4 {class} .",
    ]
    out = capsys.readouterr().out
    assert (
        "expert 1: V1 V2 V3 V4 {class} V5 V6 V7 V8 V9 .  (initialised from 'a photo of a {}, a type of pet.')"
        in out
    )


def test_class_specific_context_is_listed_per_class(pets, tiny_clip, tiny_clip_path, tmp_path):
    """CoOp with CSC: one set of vectors per class of the run (the base classes here), whose
    names are read from the run's dataset."""
    opts = tiny_opts(tiny_clip_path, "TRAINER.COOP.CSC", True, "TRAINER.COOP.N_CTX", 2)
    opts += ["TRAINER.COOP.CTX_INIT", "", "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", 4]
    cfg = trainers.make_cfg("CoOp", PETS, "configs/trainers/CoOp/vit_b16_ep50.yaml", opts, root=pets, seed=1)
    run = tmp_path / "run"
    trainer = saved_run(cfg, run, table=known_table(tiny_clip, WORDS[:6]))
    assert len(trainer.classnames) == 3

    interpret.main(["--model-dir", str(run), "--topk", "2"])
    report = read_report(run, 50)
    assert [p["class"] for p in report["prompts"]] == trainer.classnames
    assert [p["label"] for p in report["prompts"]] == [f"context of class {c!r}" for c in trainer.classnames]
    words = iter(WORDS[:6])
    for prompt in report["prompts"]:
        assert [(v["position"], v["index"]) for v in prompt["vectors"]] == [("before", 1), ("before", 2)]
        for vector in prompt["vectors"]:
            assert_known_word(vector, next(words))


@pytest.mark.parametrize(
    "name",
    ["CoOp", "CoCoOp", "KgCoOp", "MoCoOp-paper", "MoCoOp-release", "MoPD", "LASP", "ProGrad", "PLOT"],
)
def test_every_trainer_with_a_learned_context(name, base_run, tiny_clip, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run(name), run)
    interpret.main(["--model-dir", str(run), "--topk", "4"])
    report = read_report(run, 2)
    assert report["trainer"] == CASES[name].trainer
    assert (report["note"] is not None) == (name == "CoCoOp")  # CoCoOp's vectors are its static context
    ctx = torch.load(run / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    table = ctx["prompt_learner.ctx"]
    vectors = [v for p in report["prompts"] for v in p["vectors"]]
    assert [v["table_row"] for v in vectors] == list(range(table.shape[0]))
    embeddings = tiny_clip.token_embedding.weight.detach()
    for v in vectors:
        # The reference: every distance computed one by one.
        distance = (embeddings - table[v["table_row"]]).norm(dim=1)
        cosine = torch.nn.functional.cosine_similarity(embeddings, table[v["table_row"]][None], dim=1)
        assert [w["id"] for w in v["euclidean"]] == distance.topk(4, largest=False).indices.tolist()
        assert [w["distance"] for w in v["euclidean"]] == pytest.approx(
            distance.topk(4, largest=False).values
        )
        assert [w["id"] for w in v["cosine"]] == cosine.topk(4).indices.tolist()
        assert [w["similarity"] for w in v["cosine"]] == pytest.approx(
            cosine.topk(4).values.tolist(), abs=1e-6
        )


def test_load_epoch(base_run, tiny_clip, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run("CoOp"), run)
    interpret.main(["--model-dir", str(run), "--load-epoch", "1", "--topk", "1"])
    report = read_report(run, 1)
    assert report["epoch"] == 1 and not (run / "interpret-epoch2.json").exists()
    table = torch.load(run / "prompt_learner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    distance = (tiny_clip.token_embedding.weight.detach() - table["prompt_learner.ctx"][0]).norm(dim=1)
    (nearest,) = report["prompts"][0]["vectors"][0]["euclidean"]
    assert (nearest["id"], nearest["distance"]) == (
        distance.argmin().item(),
        pytest.approx(distance.min().item()),
    )


def test_zeroshot_clip_has_nothing_to_interpret(tiny_clip_path, tmp_path):
    cfg = trainers.make_cfg(
        "ZeroshotCLIP", PETS, "configs/trainers/ZeroshotCLIP/vit_b16.yaml", tiny_opts(tiny_clip_path)
    )
    (tmp_path / "config.yaml").write_text(cfg.dump())
    with pytest.raises(SystemExit) as exit_info:
        interpret.main(["--model-dir", str(tmp_path)])
    assert str(exit_info.value).startswith("nothing to interpret:")
    assert "ZeroshotCLIP run" in str(exit_info.value)
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml not found: --model-dir must be"):
        interpret.main(["--model-dir", str(tmp_path)])


def test_output_replaces_only_its_own_file(tmp_path):
    report = {"tool": interpret.TOOL, "epoch": 3, "prompts": []}
    path = interpret.write_report(report, str(tmp_path))
    assert path == str(tmp_path / "interpret-epoch3.json")
    interpret.write_report({**report, "topk": 9}, str(tmp_path))  # its own earlier output: replaced
    assert read_report(tmp_path, 3)["topk"] == 9
    for foreign in ('{"notes": 1}', "not json", "[1, 2]"):
        (tmp_path / "interpret-epoch3.json").write_text(foreign)
        with pytest.raises(FileExistsError, match="was not written by tools.interpret"):
            interpret.write_report(report, str(tmp_path))
        assert (tmp_path / "interpret-epoch3.json").read_text() == foreign
    assert sorted(os.listdir(tmp_path)) == ["interpret-epoch3.json"]  # no temporary file left
