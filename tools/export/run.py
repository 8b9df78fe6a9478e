"""A finished training run rebuilt for prediction and export (predict.py, `python -m tools.export`):
its config.yaml, its checkpoint, and the classes to classify.

The classes are, in this order of preference:
- the lines of a file (`classnames_file`, one class name per line);
- those of a dataset config (`dataset_config`, e.g. another dataset, or the run's with the new
  classes), read from the dataset under `root`; the model is then configured as cross-dataset
  evaluation configures it (that config's keys on top of the run's, and the run's own prompts
  for the prompts that shape the model, DATASET.SOURCE_CONFIG);
- the run's own: the class names its checkpoint records, or, for a run without one (ZeroshotCLIP
  trains nothing), those of its dataset (`subsample` picks other classes of it).

Where the learned tensors belong to particular classes (CoOp's CSC), other classes are refused
with the checkpoint identity's error (`trainers.runs.identity`).
"""

import collections
import os

import torch

from trainers.runs.checkpoints import checkpoint_path, has_checkpoint, read_checkpoint

CHECKPOINTS = "prompt_learner"  # the model name PromptTrainer registers, a folder of the run


def add_run_arguments(parser):
    """The flags that choose the run, its epoch, the device and the classes (predict.py and
    `python -m tools.export` share them; `load_run` reads them)."""
    parser.add_argument("--model-dir", required=True, help="a training run (train.py --output-dir)")
    parser.add_argument("--load-epoch", type=int, help="epoch to load (default: the finished run's last)")
    parser.add_argument("--device", default="", help="cpu, cuda or cuda:<index> (default: CUDA if available)")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--classnames", default="", help="a UTF-8 file of class names, one per line")
    classes.add_argument("--dataset-config-file", default="", help="the classes of this dataset config")
    parser.add_argument("--root", default="", help="DATASET.ROOT for --dataset-config-file (or the run's)")
    parser.add_argument(
        "--subsample-classes", choices=("all", "base", "new"), help="which classes of the dataset"
    )


def run_config_path(model_dir):
    path = os.path.join(model_dir, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: --model-dir must be the --output-dir of a train.py training run"
        )
    return path


def read_classnames_file(path):
    """Class names of a UTF-8 text file, one per line (surrounding spaces and blank lines ignored)."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # with or without a byte-order mark
            names = [line.strip() for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"--classnames {path} cannot be read ({err}): give a UTF-8 text file, one class name per line"
        ) from None
    if not names:
        raise ValueError(f"--classnames {path} holds no class name: write one class name per line")
    twice = [name for name, n in collections.Counter(names).items() if n > 1]
    if twice:
        raise ValueError(
            f"--classnames {path} lists {', '.join(map(repr, twice))} more than once: each class once"
        )
    return names


def flat_opts(tree, prefix=""):
    """KEY VALUE pairs of a config key tree (nested dicts), for `trainers.make_cfg`'s opts."""
    opts = []
    for key, value in tree.items():
        if isinstance(value, dict):
            opts += flat_opts(value, f"{prefix}{key}.")
        else:
            opts += [f"{prefix}{key}", value]
    return opts


def device_opts(device):
    """Config options for `--device` ("" keeps Dassl's choice: CUDA where available)."""
    if not device:
        return []
    if device == "cpu":
        return ["USE_CUDA", False]
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
        torch.cuda.set_device(torch.device(device if ":" in device else "cuda:0"))
        return ["USE_CUDA", True]
    raise ValueError(f"--device must be cpu, cuda or cuda:<index>, not {device!r}")


def saved_identity(model_dir, epoch, best):
    """The identity of the checkpoint evaluation would load, or None where the run has no
    checkpoint (a model with nothing to learn); a checkpoint without one is refused when loaded."""
    folder = os.path.join(model_dir, CHECKPOINTS)
    if epoch is None and not best and not has_checkpoint(folder):
        return None
    return read_checkpoint(checkpoint_path(folder, epoch, best)).get("identity")


def dataset_classes(cfg, subsample):
    """Class names of the dataset of `cfg` (its `subsample` classes), in label order."""
    from dassl.data.datasets import build_dataset

    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.NUM_SHOTS = 0  # the class list only: no few-shot sample is drawn
    return list(build_dataset(cfg).classnames)


def run_cfg(model_dir, dataset_config="", root="", device=""):
    """The config the run's model is rebuilt with (module docstring)."""
    import trainers

    config = run_config_path(model_dir)
    tree = trainers.read_config_file(config)
    name = tree.get("TRAINER", {}).get("NAME")
    opts = device_opts(device)
    if dataset_config:
        own_prompts = tree.get("DATASET", {}).get("SOURCE_CONFIG") or os.path.abspath(config)
        opts += flat_opts(trainers.read_config_file(dataset_config)) + ["DATASET.SOURCE_CONFIG", own_prompts]
    return trainers.make_cfg(name, config_file=config, opts=opts, root=root)


def class_names(cfg, model_dir, epoch=None, classnames_file="", dataset_config="", subsample=""):
    """(class names, where they come from) for the run in `model_dir` (module docstring)."""
    if classnames_file:
        return read_classnames_file(classnames_file), f"--classnames {classnames_file}"
    if not dataset_config and not subsample:
        identity = saved_identity(model_dir, epoch, cfg.TEST.FINAL_MODEL == "best_val")
        if identity is not None:
            return identity["classnames"], "the run's checkpoint"
    subsample = subsample or ("all" if dataset_config else cfg.DATASET.SUBSAMPLE_CLASSES)
    where = f"dataset {cfg.DATASET.NAME} under {cfg.DATASET.ROOT} ({subsample} classes)"
    return dataset_classes(cfg, subsample), where


def load_run(model_dir, epoch=None, classnames_file="", dataset_config="", root="", subsample="", device=""):
    """(trainer, where the class names come from): the run's model for those classes, its
    checkpoint loaded as evaluation loads it (without `epoch`: the finished run's last)."""
    import trainers

    cfg = run_cfg(model_dir, dataset_config, root, device)
    names, where = class_names(cfg, model_dir, epoch, classnames_file, dataset_config, subsample)
    trainer = trainers.build_trainer(cfg, names)
    if any(p.requires_grad for p in trainer.model.parameters()):  # hand-crafted prompts: nothing saved
        trainer.load_model(model_dir, epoch)
    trainer.set_model_mode("eval")
    return trainer, where
