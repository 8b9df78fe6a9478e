"""Predict the classes of images with a trained run: CoOp-style flags, the run's own preprocessing.

    python predict.py --model-dir output/.../seed1 photos/ more/*.jpg one.png --output preds.csv

Inputs are image files, folders (every image below them, sorted) and glob patterns. The model
is the run's, rebuilt from its config.yaml and loaded as evaluation loads it (without
--load-epoch: the finished run's last epoch), and images go through the run's test transform,
so predictions on the run's test images reproduce its test accuracy. Classes: the run's (from
its checkpoint), the lines of a file (--classnames), or a dataset's (--dataset-config-file with
--root; --subsample-classes new gives a base-trained run the new classes of its dataset).

Per image: the top-k classes with their probabilities (softmax of the logits), and for models
that route (MoCoOp's experts, MoPD's teachers) the candidates the router kept and their weights.
The output (.csv or .jsonl, or `--output -` for stdout) is written atomically once every image is
done. Missing and unreadable images are one error that lists them, or with --skip-bad rows whose
`error` says why. A folder of class sub-folders (as ImageFolder) named after the run's classes is
labelled: its images get their true class, and the predictions their accuracy, per-class accuracy
and confusion matrix (tools/labelled).
"""

import warnings

# As in train.py: two warnings no user can act on (openai-clip and wilds import pkg_resources;
# wilds asks PyPI for a newer version).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message="Failed to check for latest version of package")

import argparse
import csv
import glob
import json
import os
import sys
from contextlib import nullcontext, redirect_stdout

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from clipprompt.atomic import WriteError, atomic_file, write_error_message
from clipprompt.caching import CachedTextFeatures
from clipprompt.clip_loading import CheckpointError
from clipprompt.images import open_rgb
from clipprompt.learnable import CheckpointMismatch
from datasets.image_check import unreadable_image
from datasets.image_folder import is_image
from tools.export.run import add_run_arguments, load_run
from tools.labelled.labels import folder_labels
from tools.labelled.metrics import check_metrics_dir, metrics, summary_lines, write_metrics
from trainers.runs.checkpoints import UnreadableCheckpoint

FORMATS = (".csv", ".jsonl")
STDOUT = "-"
# What reading an image raises: PIL (UnidentifiedImageError and truncated data are OSErrors) and
# clipprompt.images (pixel ranges it cannot scale, images over the pixel limit: ValueErrors).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError)
SHOWN = 10  # problems named in an error message


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python predict.py", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quoted)")
    add_run_arguments(parser)
    parser.add_argument("--output", required=True, help="predictions file: .csv or .jsonl, or - for stdout")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="of --output - (default csv)")
    parser.add_argument(
        "--metrics-dir",
        help="where labelled folders' accuracy and confusion matrix go (default: <--output without "
        "its extension>_metrics; with --output -, none unless given)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output and metric files")
    parser.add_argument("--topk", type=int, help="classes listed per image (default 5, or all if fewer)")
    parser.add_argument("--batch-size", type=int, help="default: the run's DATALOADER.TEST.BATCH_SIZE")
    parser.add_argument("--num-workers", type=int, help="default: the run's DATALOADER.NUM_WORKERS")
    parser.add_argument("--skip-bad", action="store_true", help="skip missing or unreadable images")
    args = parser.parse_args(argv)
    if args.output == STDOUT:
        args.format = args.format or "csv"
    elif os.path.splitext(args.output)[1] not in FORMATS:
        parser.error(
            f"--output {args.output}: the file name must end in {' or '.join(FORMATS)} (or - for stdout)"
        )
    elif args.format and f".{args.format}" != os.path.splitext(args.output)[1]:
        parser.error(
            f"--format {args.format} is for --output -; the extension of {args.output} sets its format"
        )
    else:
        args.format = os.path.splitext(args.output)[1][1:]
    if args.output != STDOUT and os.path.exists(args.output) and not args.overwrite:
        parser.error(f"--output {args.output} exists: choose another file, or pass --overwrite")
    if args.subsample_classes and args.classnames:
        parser.error("--subsample-classes picks classes of a dataset; --classnames lists them")
    for flag in ("topk", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def images_below(folder):
    """Every image file below `folder`, sorted; hidden files and folders are left out. Symlinked
    folders are followed (as a `**` pattern follows them), except a link back to a folder above
    it, which would repeat the images forever: those are named. A link named as an image that
    leads nowhere is kept, so that it is reported as unreadable."""
    found, loops = [], []

    def walk(path, above):
        real = os.path.realpath(path)
        if real in above:
            loops.append(path)
            return
        for entry in os.scandir(path):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows symlinks
                walk(entry.path, above | {real})
            elif is_image(entry.name):
                found.append(entry.path)

    walk(folder, frozenset())
    if loops:
        print(f"Note: not followed (it leads back to a folder above it): {', '.join(sorted(loops))}")
    return sorted(found)


def expand_inputs(inputs):
    """[(path, None)] for the images of each input in order (a file as given, the images below a
    folder, the files a pattern matches), or [(input, why there are none)]."""
    entries = []
    for item in inputs:
        if os.path.isdir(item):
            found, reason = images_below(item), "folder without images"
        elif os.path.isfile(item):
            found, reason = [item], ""
        elif any(char in item for char in "*?["):  # a glob pattern
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            reason = "pattern matches no file"
        else:
            found, reason = [], "not found"
        entries += [(path, None) for path in found] or [(item, reason)]
    return entries


class ImageFiles(Dataset):
    """(index, transformed image or None, why it could not be read) per path."""

    def __init__(self, paths, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(open_rgb(self.paths[i])), None
        except READ_ERRORS as err:
            return i, None, f"{type(err).__name__}: {err}"


def collate(items):
    """(indices, stacked images or None, [(index, reason)] of images that could not be read)."""
    good = [(i, image) for i, image, _ in items if image is not None]
    failed = [(i, reason) for i, _, reason in items if reason is not None]
    images = torch.stack([image for _, image in good]) if good else None
    return [i for i, _ in good], images, failed


def image_record(path, probs, top, routing, b, classnames, names):
    """The JSON-ready prediction of image `b` of a batch."""
    record = {
        "image": path,
        "top": [
            {"label": int(c), "class": classnames[int(c)], "probability": float(p)}
            for p, c in zip(top.values[b], top.indices[b])
        ],
        "error": None,
    }
    if routing is not None:
        record["routing"] = [
            {"index": int(g), "template": names[int(g)], "weight": float(w)}
            for g, w in zip(routing.index[b], routing.weight[b])
        ]
    return record


@torch.no_grad()
def predict_images(trainer, paths, topk, batch_size, num_workers):
    """One record per path, in order: its prediction, or {"image", "error"} when it cannot be read."""
    from dassl.data.transforms import build_transform

    loader = DataLoader(
        ImageFiles(paths, build_transform(trainer.cfg, is_train=False)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
    )
    model, names = trainer.model, trainer.model.routing_names
    cache = model.cached_text_features() if isinstance(model, CachedTextFeatures) else nullcontext()
    records = [None] * len(paths)
    show = len(paths) > batch_size
    with cache, tqdm(total=len(paths), unit="image", disable=not show, file=sys.stderr) as bar:
        for indices, images, failed in loader:
            for i, reason in failed:
                records[i] = {"image": paths[i], "error": reason}
            if images is not None:
                with trainer.autocast():
                    logits, routing = model.classify(images.to(trainer.device))
                probs = logits.float().softmax(dim=-1)
                top = probs.topk(topk, dim=-1)
                for b, i in enumerate(indices):
                    records[i] = image_record(paths[i], probs, top, routing, b, trainer.classnames, names)
            bar.update(len(indices) + len(failed))
    return records


def problem_list(problems):
    problems = list(problems)
    shown = "; ".join(f"{path} ({reason})" for path, reason in problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return shown + more


def csv_rows(records, topk, kind, top_k, labelled):
    header = ["image"] + (["true_class"] if labelled else [])
    for j in range(1, topk + 1):
        header += [f"class_{j}", f"probability_{j}"]
    for j in range(1, top_k + 1):
        header += [f"{kind}_{j}", f"{kind}_{j}_weight"]
    rows = [header + ["error"]]
    for r in records:
        row = [r["image"]] + ([r.get("true_class") or ""] if labelled else [])
        if r["error"] is not None:
            row += [""] * (len(header) - len(row))
        else:
            row += [x for t in r["top"] for x in (t["class"], f"{t['probability']:.6f}")]
            row += [x for g in r.get("routing", ()) for x in (g["template"], f"{g['weight']:.6f}")]
        rows.append(row + [r["error"] or ""])
    return rows


def write_predictions(path, fmt, records, topk, kind, top_k):
    """The records as CSV (one row per image) or JSON lines, written atomically (or to stdout)."""
    labelled = any("true_class" in r for r in records)
    out = nullcontext(sys.stdout) if path == STDOUT else atomic_file(path, "w", encoding="utf-8", newline="")
    with out as f:
        if fmt == "csv":
            csv.writer(f).writerows(csv_rows(records, topk, kind, top_k, labelled))
        else:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def unreadable(paths, skip_bad):
    """{path: reason} of the images whose header does not parse; an error unless `skip_bad`."""
    bad = {p: reason for p in paths if (reason := unreadable_image(p)) is not None}
    if bad and not skip_bad:
        raise SystemExit(
            f"error: {len(bad)} of {len(paths)} images cannot be read: {problem_list(bad.items())}. "
            "Fix or remove them, or pass --skip-bad to predict the others."
        )
    return bad


def prediction_settings(args, trainer):
    """(top k, batch size, data-loader workers) from the flags, defaulting to the run's."""
    classnames, cfg = trainer.classnames, trainer.cfg
    shown = ", ".join(classnames[:8]) + (", ..." if len(classnames) > 8 else "")
    topk = args.topk or min(5, len(classnames))
    if topk > len(classnames):
        raise SystemExit(f"error: --topk {topk} is more than the {len(classnames)} classes ({shown})")
    batch_size = args.batch_size or cfg.DATALOADER.TEST.BATCH_SIZE
    workers = cfg.DATALOADER.NUM_WORKERS if args.num_workers is None else args.num_workers
    return topk, batch_size, workers


def main(argv=None):
    args = parse_args(argv)
    # With --output -, stdout carries the predictions alone: everything else goes to stderr.
    quiet = redirect_stdout(sys.stderr) if args.output == STDOUT else nullcontext()
    try:
        with quiet:
            records, settings = predict(args)
        write_predictions(args.output, args.format, records, *settings)
    except BrokenPipeError:  # the reader of stdout (e.g. `| head`) stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except (CheckpointMismatch, CheckpointError, UnreadableCheckpoint, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    except WriteError as err:  # the output: disk full, read-only folder
        raise SystemExit(f"error: {write_error_message(err)}") from None


def metrics_folder(args, labels):
    """Where the metrics of labelled images go (None: print them only)."""
    if not labels.labels or (args.output == STDOUT and not args.metrics_dir):
        return None
    folder = args.metrics_dir or os.path.splitext(args.output)[0] + "_metrics"
    check_metrics_dir(folder, args.overwrite)
    return folder


def report_labelled(records, labels, classnames, folder, overwrite):
    """Add the true classes to the records, print the accuracy and write the metric files."""
    for r in records:
        if r["image"] in labels.labels:
            r["true_class"] = classnames[labels.labels[r["image"]]]
    result = metrics(records, labels.labels, classnames)
    if not result["images"]:
        print("No labelled image could be predicted: no accuracy.")
        return
    if folder:
        write_metrics(folder, result, classnames, labels.notes, overwrite)
    print("\n".join(summary_lines(result, classnames, folder)))


def predict(args):
    """Predict the images of the parsed command line: (records, write_predictions' settings)."""
    entries = expand_inputs(args.inputs)
    problems = {item: reason for item, reason in entries if reason}
    if problems and not args.skip_bad:
        raise SystemExit(
            f"error: inputs without images: {problem_list(problems.items())}. Pass --skip-bad to go on."
        )
    paths = [path for path, reason in entries if not reason]
    problems |= unreadable(paths, args.skip_bad)
    run = (args.model_dir, args.load_epoch, args.classnames, args.dataset_config_file, args.root)
    trainer, where = load_run(*run, args.subsample_classes, args.device)
    names = trainer.classnames
    print(f"{trainer.cfg.TRAINER.NAME}: {len(names)} classes from {where}: {', '.join(names[:8])}")
    labels = folder_labels(args.inputs, names, images_below)
    for note in labels.notes:
        print(f"Note: {note}")
    folder = metrics_folder(args, labels)
    topk, batch_size, workers = prediction_settings(args, trainer)
    todo = [path for path in paths if path not in problems]
    done = dict(zip(todo, predict_images(trainer, todo, topk, batch_size, workers)))
    failed = {path: r["error"] for path, r in done.items() if r["error"] is not None}
    if failed and not args.skip_bad:
        raise SystemExit(
            f"error: {len(failed)} of {len(todo)} images cannot be decoded: {problem_list(failed.items())}. Nothing "
            "was written. Fix or remove them, or pass --skip-bad to predict the others."
        )
    problems |= failed
    records = [done.get(path) or {"image": path, "error": problems[path]} for path, _ in entries]
    if labels.labels:
        report_labelled(records, labels, names, folder, args.overwrite)
    target = "stdout" if args.output == STDOUT else args.output
    print(f"Predicted {len(records) - len(problems)} images: {target}")
    if problems:
        print(f"Skipped {len(problems)} (--skip-bad): {problem_list(list(problems.items()))}")
    return records, (topk, trainer.model.routing_kind, trainer.model.top_k)


if __name__ == "__main__":
    main()
