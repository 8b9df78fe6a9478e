"""The nearest words of the CLIP's vocabulary to each learned context vector of a trained run.

    python -m tools.interpret --model-dir RUN [--load-epoch N] [--topk K] [--root DATA]

For every context vector of the run's checkpoint: the K token embeddings of its CLIP's
vocabulary (the backbone's tokenizer's: CLIP's BPE, or another open_clip model's) nearest to it by Euclidean distance and by cosine similarity, with their distances. Vectors are
grouped per prompt as the run's model lays them out (`PromptedCLIP.context_slots`: per expert
with the template it was initialised from, per class for class-specific context) and labelled
by position, before or after the class name; the model may add a note on what they mean beyond
their words (an image-dependent shift at inference). A model with hand-crafted prompts only has
no learned context.

The model is built from the run's own config.yaml (as trained) and loaded as evaluation loads
it: without --load-epoch, the last epoch of a finished run. The result is printed and written
to RUN/interpret-epoch<E>.json (atomically; an earlier file of this tool for the same epoch is
replaced, any other file of that name is refused). In the JSON, `token` is the vocabulary's
token (CLIP's BPE: `</w>` ends a word) and `text` its decoded text; printed, a BPE word piece
that the next token continues ends with "-".
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F

from clipprompt.atomic import atomic_file

TOOL = "tools.interpret"
# Context that does not depend on the class list is interpreted in a model built for one
# stand-in class: no data is needed.
STAND_IN_CLASSES = ["object"]


class NothingToInterpret(Exception):
    """The run's model has no learned context vectors at prompt positions."""


def build_run_model(model_dir, epoch=None, root=""):
    """(trainer, config) of the run in `model_dir`, its checkpoint loaded.

    Class-specific context needs the run's class names: the model is then built from the run's
    dataset (DATASET.ROOT of its config, or `root`).
    """
    import trainers

    config_path = os.path.join(model_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path} not found: --model-dir must be the --output-dir of a train.py training run"
        )
    name = trainers.read_config_file(config_path).get("TRAINER", {}).get("NAME")
    cfg = trainers.make_cfg(name, config_file=config_path, root=root)
    trainer = trainers.build_trainer(cfg, STAND_IN_CLASSES)
    if trainer.model.context_slots(STAND_IN_CLASSES) is None:
        raise NothingToInterpret(
            f"nothing to interpret: {model_dir} is a {name} run, whose prompts are hand-crafted "
            "templates with no learned context vectors"
        )
    if trainer.class_specific_tensors():
        trainer = trainers.build_trainer(cfg)  # the run's classes, read from its dataset
    trainer.load_model(model_dir, epoch=epoch)
    return trainer, cfg


def layout(form):
    """The prompt with its context slots numbered: "V1 V2 {class} V3 ." (fixed words between the
    context and the class name as they are: "V1 V2 of a {class} .")."""
    from clipprompt.templates import _TOKENIZER

    slots = [f"V{i + 1}" for i in range(form.n_ctx)]
    fixed = [_TOKENIZER.decode(list(form.fixed_ids)).strip()] if form.fixed_ids else []
    words = slots[: form.n_before] + fixed + ["{class}"] + slots[form.n_before :] + [form.suffix]
    return " ".join(words).strip()


def decode(token_id, tokenizer=None):
    """(token, its text) in `tokenizer`'s vocabulary (`clipprompt.tokenization`; default CLIP's
    BPE, where a token that is part of a multi-byte character shows its bytes)."""
    from clipprompt.tokenization import CLIP_BPE

    return (tokenizer or CLIP_BPE).token_text(token_id)


def nearest_tokens(vectors, embeddings, k):
    """Per vector: (ids, distances) of the k nearest embeddings by Euclidean distance and
    (ids, similarities) of the k most cosine-similar ones; fp32."""
    vectors, embeddings = vectors.float(), embeddings.float()
    # Differences, not the |x|² + |y|² - 2xy shortcut, so that a vector equal to a token
    # embedding is at distance 0, not at the shortcut's rounding error.
    distance = torch.cdist(vectors, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    near = distance.topk(k, dim=1, largest=False)
    cosine = F.normalize(vectors, dim=-1) @ F.normalize(embeddings, dim=-1).t()
    similar = cosine.topk(k, dim=1)
    return (near.indices, near.values), (similar.indices, similar.values)


def _words(ids, values, key, tokenizer):
    words = []
    for i, v in zip(ids.tolist(), values.tolist()):
        token, text = decode(i, tokenizer)
        words.append({"id": i, "token": token, "text": text, key: v})
    return words


def interpret(trainer, k):
    """The report (a JSON-ready dict) of a loaded trainer's learned context."""
    model = trainer.model
    table, slots = model.context_slots(trainer.classnames)
    embeddings = model.token_embedding.weight.detach()
    if not 1 <= k <= embeddings.shape[0]:
        raise ValueError(f"--topk must be between 1 and the vocabulary size {embeddings.shape[0]}, not {k}")
    (near_ids, near_d), (sim_ids, sim_c) = nearest_tokens(table.detach(), embeddings, k)
    prompts = []
    for label, template, classname, first, form in slots:
        vectors = []
        for j in range(form.n_ctx):
            row = first + j
            before = j < form.n_before
            vectors.append(
                {
                    "slot": f"V{j + 1}",
                    "position": "before" if before else "after",
                    "index": j + 1 if before else j + 1 - form.n_before,
                    "table_row": row,
                    "euclidean": _words(near_ids[row], near_d[row], "distance", model.tokenizer),
                    "cosine": _words(sim_ids[row], sim_c[row], "similarity", model.tokenizer),
                }
            )
        prompts.append(
            {
                "label": label,
                "template": template,
                "class": classname,
                "layout": layout(form),
                "vectors": vectors,
            }
        )
    cfg = trainer.cfg
    note = model.interpretation_note()
    return {
        "tool": TOOL,
        "trainer": cfg.TRAINER.NAME,
        "epoch": trainer.finished_epochs,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "vocabulary_size": embeddings.shape[0],
        "tokenizer": model.tokenizer.name,
        "topk": k,
        "note": note,
        "prompts": prompts,
    }


def _shown(word, key, bpe):
    text = word["text"] if word["token"].endswith("</w>") or not bpe else word["text"] + "-"
    return f"{text} ({word[key]:.3f})"


def format_report(report, model_dir):
    title = f"{report['trainer']} run {model_dir} (epoch {report['epoch']})"
    tokens = f"{report['vocabulary_size']:,} tokens of {report['tokenizer']}"
    lines = [f"{title}: nearest of {tokens}, top {report['topk']}"]
    bpe = report["tokenizer"] == "CLIP BPE"
    if report["note"]:
        lines.append(f"{report['trainer']}: {report['note']}")
    for p in report["prompts"]:
        head = f"{p['label']}: {p['layout']}"
        lines.append(head + (f"  (initialised from {p['template']!r})" if p["template"] else ""))
        for v in p["vectors"]:
            lines.append(f"  {v['slot']:>4} {v['position']} {v['index']}")
            lines.append("       euclidean: " + ", ".join(_shown(w, "distance", bpe) for w in v["euclidean"]))
            lines.append("       cosine:    " + ", ".join(_shown(w, "similarity", bpe) for w in v["cosine"]))
    return "\n".join(lines)


def write_report(report, model_dir):
    """RUN/interpret-epoch<E>.json, atomically; only this tool's own earlier file is replaced."""
    path = os.path.join(model_dir, f"interpret-epoch{report['epoch']}.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                ours = json.load(f).get("tool") == TOOL
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise FileExistsError(f"{path} exists and was not written by {TOOL}: move it away first")
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.interpret", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="a training run (train.py --output-dir)")
    parser.add_argument("--load-epoch", type=int, help="epoch to load (default: the finished run's last)")
    parser.add_argument("--topk", type=int, default=5, help="nearest tokens listed per vector (default 5)")
    parser.add_argument("--root", default="", help="DATASET.ROOT for per-class context (CSC) if moved")
    args = parser.parse_args(argv)
    try:
        trainer, _ = build_run_model(args.model_dir, args.load_epoch, args.root)
    except NothingToInterpret as err:
        raise SystemExit(str(err)) from None
    with torch.no_grad():
        report = interpret(trainer, args.topk)
    print(format_report(report, args.model_dir))
    print(f"Written to {write_report(report, args.model_dir)}")


if __name__ == "__main__":
    main()
