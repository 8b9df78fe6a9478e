"""The command line of `python -m tools.benchmark` (its documentation: tools/benchmark/__init__.py)."""

import argparse
import contextlib
import copy
import json
import os
import platform
import tempfile
import time

import torch

import tools.benchmark
from clipprompt.clip_loading import build_tiny_clip, convert_weights, save_clip_state_dict
from clipprompt.open_clip_backbone import OpenCLIPSource, build_open_clip, convert_weights_to_lp, model_config
from clipprompt.towers import image_resolution, text_tower
from tools.benchmark.build import REPO, SIZES, TRAINERS, VIT_B16, Bench
from tools.benchmark.gpu import run_gpu
from tools.benchmark.imagenet import IMAGENET, IMAGENET_CPU, imagenet_scale
from tools.benchmark.measure import PeakMemory
from tools.benchmark.precision import run_precision
from tools.benchmark.report import GIB, print_imagenet, print_size_tables, print_trainer_tables
from tools.benchmark.report_suites import print_gpu, print_precision, print_targets
from tools.benchmark.sizes import size_table
from tools.benchmark.table import trainer_table
from tools.benchmark.targets import run_targets


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.benchmark", description=tools.benchmark.__doc__.splitlines()[0]
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to measure (default: cuda when available, else cpu)",
    )
    p.add_argument(
        "--suite",
        choices=("table", "targets", "precision", "gpu"),
        default="table",
        help="table: the trainers at --size; targets: the shared prefix's speed and memory targets; "
        "precision: PREC amp against fp32; gpu: the CUDA measurements docs/PERFORMANCE.md lacks",
    )
    p.add_argument(
        "--size",
        choices=("default", *SIZES),
        default="default",
        help="the table's sizes: default (10 classes), a dataset's (classes, templates, experts, test set, "
        "the configs' batches), or imagenet (MoCoOp's memory at ImageNet scale)",
    )
    p.add_argument(
        "--trainers",
        nargs="+",
        default=list(TRAINERS),
        choices=list(TRAINERS),
        metavar="TRAINER",
        help=f"the trainers of the table (default: all: {' '.join(TRAINERS)})",
    )
    p.add_argument(
        "--dataset",
        help="configs/datasets/<name>.yaml: templates and experts (default: the --size dataset, else oxford_pets)",
    )
    p.add_argument(
        "--classes",
        type=int,
        help="classes to classify (default 10; dataset sizes: the dataset's; imagenet: 500, 25 on a CPU)",
    )
    p.add_argument(
        "--virtual",
        type=int,
        help="MoCoOp's extra (virtual) text classes, as in base-to-new training (default: --classes; "
        "dataset sizes: 0, all classes are trained; 0 = none)",
    )
    p.add_argument(
        "--experts",
        type=int,
        help="MoCoOp experts: the first G template groups of the dataset "
        "(default: all; imagenet scale on a CPU: 4)",
    )
    p.add_argument(
        "--batch",
        type=int,
        help="training batch (default 4; dataset sizes: each trainer config's, at most 8 on a CPU; "
        "imagenet: 32, 4 on a CPU; precision: 8)",
    )
    p.add_argument(
        "--eval-batch", type=int, help="evaluation batch (default: --batch; dataset sizes: the configs')"
    )
    p.add_argument(
        "--prec",
        choices=("fp32", "fp16", "amp"),
        help="TRAINER.PREC (default: fp32 on a CPU, the configs' fp16 on CUDA)",
    )
    p.add_argument(
        "--repeats", type=int, help="timed repetitions (median reported; default 3, imagenet scale 1)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument(
        "--eval-repeats",
        type=int,
        help="dataset sizes and target T4: timed test batches per path (default 1 on a CPU, 3 on CUDA)",
    )
    p.add_argument(
        "--eval-warmup",
        type=int,
        help="dataset sizes and target T4: untimed test batches per path first (default 0 on a CPU, 1 on CUDA)",
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--image-size", type=int, help="image side (default: ViT-B/16's 224; --toy: 32)")
    p.add_argument(
        "--classnames-file",
        help="class names, one per line ('<wnid> <name>' lines as in "
        "ImageNet's classnames.txt are accepted); default: the dataset's where known, else generated",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        help="imagenet scale: the CHUNK_SIZE measured against 0 (default: one expert's text classes)",
    )
    p.add_argument(
        "--forward",
        action="store_true",
        help="also time forward-only text encoding for every trainer (default: CoOp only)",
    )
    p.add_argument(
        "--toy",
        action="store_true",
        help="a tiny random CLIP (width 64, ViT-B/16's 12 layers) instead of ViT-B/16, and for the "
        "targets and gpu suites toy sizes (a few classes, batch 1): to test the script, the numbers "
        "mean nothing",
    )
    p.add_argument(
        "--backbone",
        default="",
        help="open_clip:<model> (e.g. open_clip:ViT-B-16): that open_clip model's architecture with random "
        "weights instead of CLIP ViT-B/16's (its image size; the trainer tables only; docs/BACKBONES.md)",
    )
    p.add_argument(
        "--backbone-config",
        default="",
        help="with --backbone: a JSON model config (MODEL.BACKBONE.MODEL_CONFIG)",
    )
    p.add_argument("--json", help="result file (default: output/benchmark/<suite or size>_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.backbone and (not args.backbone.startswith("open_clip:") or args.toy):
        p.error("--backbone takes open_clip:<model> (without --toy, which is a tiny OpenAI CLIP)")
    if args.backbone and (args.suite != "table" or args.size == "imagenet"):
        p.error(
            "--backbone measures the trainer tables (--suite table; the ImageNet memory model is ViT-B/16's)"
        )
    if args.backbone_config and not args.backbone:
        p.error("--backbone-config needs --backbone open_clip:<model>")
    apply_defaults(args)
    if (
        min(args.classes, args.batch or 1, args.eval_batch or 1, args.repeats, args.eval_repeats) < 1
        or args.virtual < 0
        or min(args.warmup, args.eval_warmup) < 0
    ):
        p.error(
            "--classes, --batch, --eval-batch, --repeats and --eval-repeats must be positive, "
            "--virtual, --warmup and --eval-warmup >= 0"
        )
    return args


def apply_defaults(args):
    """Fill in what the command line left open, by suite and size (see the help texts)."""
    cpu = args.device == "cpu"
    imagenet = args.suite == "table" and args.size == "imagenet"
    dataset_size = args.suite == "table" and args.size in SIZES and not imagenet
    small = IMAGENET_CPU if cpu else IMAGENET
    defaults = {
        "dataset": args.size if imagenet or dataset_size else "oxford_pets",
        "classes": small["classes"] if imagenet else SIZES[args.size]["classes"] if dataset_size else 10,
        "batch": small["batch"]
        if imagenet
        else None
        if dataset_size
        else 8
        if args.suite == "precision"
        else 4,
        "repeats": 1 if imagenet else 3,
        "prec": "fp32" if cpu else "fp16",
        "eval_repeats": 1 if cpu else 3,
        "eval_warmup": 0 if cpu else 1,
        "experts": small["experts"] if imagenet else None,
        "image_size": 32 if args.toy else VIT_B16["image_resolution"],  # --backbone: its own
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.virtual is None:
        args.virtual = 0 if dataset_size else args.classes
    if args.eval_batch is None and not dataset_size:
        args.eval_batch = args.batch


# --toy's CLIP: build_tiny_clip's widths with ViT-B/16's depth, so that every trainer config
# builds (deep prompts sit in up to 12 layers of each tower).
TOY_CLIP = {"vision_layers": 12, "transformer_layers": 12}


def machine(device):
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
    return info


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    info = machine(device)
    load_before = os.getloadavg()
    started = time.time()
    peak = PeakMemory(device)
    name = args.size if args.suite == "table" else args.suite
    print(
        f"# Benchmark ({name}) on {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
        f"{info['threads']} threads, load average {load_before[0]:.2f}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        backbone, weight_bytes = random_backbone(args, tmp)
        info["backbone"] = backbone["name"]
        bench = Bench(args, device, backbone)
        result = {"args": vars(args), "machine": info, "memory_method": peak.method}
        result.update(run_suite(args, device, bench, peak, weight_bytes))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["wall_s"] = round(time.time() - started, 1)

    print(
        f"\nMachine: {info}\nLoad average before/after: {load_before} / {result['load_average']['after']}; "
        f"peak memory: {peak.method}"
    )
    print_result(args, result)
    path = args.json or os.path.join(REPO, "output", "benchmark", f"{name}_{args.device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nWrote {path} ({result['wall_s']} s)")


def random_backbone(args, folder):
    """The backbone the benchmark measures, with random weights saved in `folder`: CLIP ViT-B/16's
    architecture (`--toy`: a tiny CLIP) or `--backbone`'s open_clip model (its image size is
    then `--image-size`). Returns ({name, weights, model_config}, {dtype: bytes of the weights})."""
    if args.backbone:
        source = OpenCLIPSource.parse(args.backbone, model_config=args.backbone_config)
        clip_model = build_open_clip(model_config(source), source)
        tower = text_tower(clip_model)
        if not tower.prefix_exact:
            raise SystemExit(
                f"--backbone {source.name}: the benchmark compares text-encoder paths, and this text tower has "
                f"only its reference path ({tower.why_not_prefix_exact()})"
            )
        args.image_size = image_resolution(clip_model)[0]
        path = os.path.join(folder, "open_clip_random.pt")
        torch.save(clip_model.state_dict(), path)
        backbone = {"name": source.name, "weights": path, "model_config": args.backbone_config}
        half = copy.deepcopy(clip_model)
        convert_weights_to_lp(half)
    else:
        architecture = TOY_CLIP if args.toy else VIT_B16
        clip_model = build_tiny_clip(**{**architecture, "image_resolution": args.image_size})
        path = save_clip_state_dict(clip_model, os.path.join(folder, "vit_b16_random.pt"))
        backbone = {"name": path, "weights": "", "model_config": ""}
        half = copy.deepcopy(clip_model)
        convert_weights(half)
    weight_bytes = {
        name: sum(t.numel() * t.element_size() for t in model.state_dict().values())
        for name, model in (("fp32", clip_model), ("fp16", half))
    }
    return backbone, weight_bytes


def run_suite(args, device, bench, peak, weight_bytes):
    if args.suite == "targets":
        goals, measured = run_targets(args, device, bench, peak)
        return {"targets": goals, "measured": measured}
    if args.suite == "precision":
        rows, inputs = run_precision(args, device, bench, peak)
        return {"trainers": rows, "inputs": inputs}
    if args.suite == "gpu":
        return run_gpu(args, device, bench, peak, weight_bytes)
    if args.size == "imagenet":
        return {"imagenet": imagenet_scale(args, device, bench, peak, weight_bytes)}
    if args.size in SIZES:
        rows, inputs = size_table(args, device, bench, peak)
    else:
        rows, inputs = trainer_table(args, device, bench, peak)
    return {"trainers": rows, "inputs": inputs}


def print_result(args, result):
    if args.suite == "targets":
        print_targets(result["targets"], result["measured"])
    elif args.suite == "precision":
        print_precision(result["trainers"], result["inputs"])
    elif args.suite == "gpu":
        print_gpu(result)
    elif args.size == "imagenet":
        print_imagenet(result["imagenet"])
    elif args.size in SIZES:
        print_size_tables(result["trainers"], result["inputs"])
    else:
        print_trainer_tables(result["trainers"], result["inputs"], args)


if __name__ == "__main__":
    main()
