"""A run's output folder: which config keys define the run, whether a folder may be started
(again) with a config, and the run's log.

One folder holds one run. Starting train.py again in it resumes or re-evaluates that run, so
the config must define the same run; keys that only say where files are or how the run is
executed may change (the data or the output tree may move, a resumed run may use fewer workers
or a smaller text-encoder chunk after running out of memory). A folder that holds neither a
checkpoint nor a result (e.g. the start failed on a wrong DATASET.ROOT) may be started with any
config.
"""

import glob
import json
import os
import secrets
import sys
import time

import yaml

from clipprompt.atomic import naming_write_errors, write_text_atomically

from .identity import plain

# Keys that do not change what a run computes: paths, workers, logging, checkpoint frequency,
# and the device, memory and determinism knobs (see README "Re-running, resuming, moving").
NOT_RUN_DEFINING = frozenset(
    {
        "OUTPUT_DIR",
        "RESUME",
        "DATASET.ROOT",
        "MODEL.BACKBONE.DOWNLOAD_ROOT",
        "DATALOADER.NUM_WORKERS",
        "TRAIN.PRINT_FREQ",
        "TRAIN.CHECKPOINT_FREQ",
        "VERBOSE",
        "TEST.PER_CLASS_RESULT",
        "TEST.COMPUTE_CMAT",
        "USE_CUDA",
        "DETERMINISTIC",
        "TRAINER.TEXT_ENCODER.CHUNK_SIZE",
        "TRAINER.TEXT_ENCODER.CHECKPOINT",
    }
)
BACKBONE_KEY = "MODEL.BACKBONE.NAME"
# Written at the top of every start of train.py in log.txt; tools/results/runlog.py reads it.
START_LINE = "==== train.py start {stamp} ===="
STAMP_FORMAT = "%Y-%m-%d-%H-%M-%S"
# The seed drawn at the first start of a run without --seed (run_seed).
SEED_FILE = "seed.json"


def flat_config(tree, prefix=""):
    """{"A.B.C": value} of a nested config (a yacs node or the dict of its YAML dump)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = plain(value)
    return flat


def _is_path(backbone):
    from .clip_loading import clip

    return backbone not in clip.available_models()


def config_changes(saved_yaml, cfg):
    """(changed, one_sided): run-defining keys whose value differs between the saved config
    (YAML text) and `cfg`, as (key, old, new), and keys only one side has (declared by another
    version of the code; not compared). A backbone given as a file path is compared by the
    checkpoint's backbone fingerprint when a checkpoint is loaded, not by its path."""
    old = flat_config(yaml.safe_load(saved_yaml) or {})
    new = flat_config(yaml.safe_load(cfg.dump()))
    changed, one_sided = [], []
    for key in sorted(set(old) | set(new)):
        if key in NOT_RUN_DEFINING:
            continue
        if key not in old or key not in new:
            one_sided.append(key)
        elif old[key] != new[key]:
            if key == BACKBONE_KEY and _is_path(str(old[key])) and _is_path(str(new[key])):
                continue
            changed.append((key, old[key], new[key]))
    return changed, one_sided


def held_results(run_dir):
    """What in `run_dir` belongs to a run that started for real: checkpoint files and logs with
    a result block (an empty list when the folder may be started with any config)."""
    held = sorted(
        os.path.relpath(p, run_dir)
        for pattern in ("*/checkpoint", "*/model.pth.tar-*", "*/model-best.pth.tar")
        for p in glob.glob(os.path.join(run_dir, pattern))
    )
    for log in sorted(glob.glob(os.path.join(run_dir, "log.txt*"))):
        with open(log, encoding="utf-8", errors="replace") as f:
            if any(line.rstrip() == "=> result" for line in f):
                held.append(f"{os.path.basename(log)} (a result)")
    return held


def run_seed(run_dir, seed, saved_config=None):
    """(seed, note) for a start into `run_dir` with SEED `seed`.

    A seed >= 0 is the run's. Without one (SEED < 0) the first start draws a seed and records it
    in `run_dir/seed.json`, and later starts (resumes, re-evaluations) reuse it, so that a resumed
    run trains on the same few-shot sample. A folder holding the checkpoint or result of a run
    started without a seed before seeds were recorded is refused: its sample cannot be drawn again.
    `saved_config` is the folder's config.yaml text, if any."""
    if seed >= 0:
        return seed, None
    path = os.path.join(run_dir, SEED_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)["seed"]
        return recorded, f"SEED {seed}: using seed {recorded}, drawn at this run's first start ({path})"
    saved = yaml.safe_load(saved_config) if saved_config else None
    held = held_results(run_dir)
    if isinstance(saved, dict) and saved.get("SEED", -1) < 0 and held:
        raise RuntimeError(
            f"{run_dir} holds a run started without --seed whose seed was not recorded ({', '.join(held[:4])}): "
            "its few-shot sample cannot be drawn again, so it cannot be resumed or re-evaluated as it was. "
            "Use another --output-dir (and --seed N for a run that can be repeated)."
        )
    drawn = secrets.randbelow(2**31)
    write_text_atomically(path, json.dumps({"seed": drawn}) + "\n")
    return drawn, f"SEED {seed}: drew seed {drawn} for this run, recorded in {path} (later starts reuse it)"


def describe_changes(changed):
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed)


class RunLog:
    """Everything printed goes to the console and is appended to `log.txt`, so the whole run
    (first start, resumes, re-evaluations) stays one log, each start headed by START_LINE.
    (Dassl's logger wrote `log.txt-<timestamp>` on every later start, which CoOp's
    parse_test_res.py never reads.)"""

    def __init__(self, path):
        self.console = sys.stdout
        self.path = path
        with naming_write_errors(path):
            # Open for the rest of the process, as stdout is.
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            if self.file.tell():
                self.file.write("\n")
            self.file.write(START_LINE.format(stamp=time.strftime(STAMP_FORMAT)) + "\n")

    def write(self, text):
        self.console.write(text)
        with naming_write_errors(self.path):
            self.file.write(text)

    def flush(self):
        self.console.flush()
        with naming_write_errors(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self):
        """Back to the console alone (after a write error, so that exiting does not write again)."""
        sys.stdout = self.console
        try:
            self.file.close()
        except OSError:
            pass  # the unwritten rest of the log is lost with the error that stopped the run

    def __getattr__(self, name):  # isatty, encoding, ...: those of the console
        return getattr(self.console, name)


def start_log(output_dir):
    """Tee stdout into `output_dir/log.txt` (appending) for the rest of the process."""
    with naming_write_errors(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    sys.stdout = RunLog(os.path.join(output_dir, "log.txt"))
    return sys.stdout
