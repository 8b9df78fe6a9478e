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
from tools.benchmark.build import REPO, TRAINERS, VIT_B16, Bench
from tools.benchmark.imagenet import IMAGENET, IMAGENET_CPU, imagenet_scale
from tools.benchmark.measure import PeakMemory
from tools.benchmark.report import GIB, print_imagenet, print_trainer_tables
from tools.benchmark.table import targets, trainer_table


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.benchmark", description=tools.benchmark.__doc__.splitlines()[0]
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--scale",
        choices=("default", "imagenet"),
        default="default",
        help="imagenet: MoCoOp's memory at ImageNet scale instead of the trainer table",
    )
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    p.add_argument(
        "--dataset",
        default="oxford_pets",
        help="configs/datasets/<name>.yaml: templates and experts (default oxford_pets; "
        "imagenet scale: imagenet)",
    )
    p.add_argument(
        "--classes", type=int, help="classes to classify (default 10; imagenet scale: 500, 25 on a CPU)"
    )
    p.add_argument(
        "--virtual",
        type=int,
        help="MoCoOp's extra (virtual) text classes, as in base-to-new "
        "training (default: --classes; 0 = none)",
    )
    p.add_argument(
        "--experts",
        type=int,
        help="MoCoOp experts: the first G template groups of the dataset "
        "(default: all; imagenet scale on a CPU: 4)",
    )
    p.add_argument("--batch", type=int, help="training batch (default 4; imagenet scale: 32, 4 on a CPU)")
    p.add_argument("--eval-batch", type=int, help="evaluation batch (default: --batch)")
    p.add_argument(
        "--prec",
        choices=("fp32", "fp16", "amp"),
        help="TRAINER.PREC (default: fp32 on a CPU, the configs' fp16 on CUDA)",
    )
    p.add_argument(
        "--repeats", type=int, help="timed repetitions (median reported; default 3, imagenet scale 1)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--image-size", type=int, default=224, help="image side (ViT-B/16: 224)")
    p.add_argument(
        "--classnames-file",
        help="class names, one per line ('<wnid> <name>' lines as in "
        "ImageNet's classnames.txt are accepted); default: generated names",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        help="imagenet scale: the CHUNK_SIZE measured against 0 (default: one expert's text classes)",
    )
    p.add_argument(
        "--forward",
        action="store_true",
        help="also time the options on forward-only text encoding for every trainer (default: CoOp only)",
    )
    p.add_argument("--json", help="result file (default: output/benchmark/<scale>_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    imagenet = args.scale == "imagenet"
    small = IMAGENET_CPU if args.device == "cpu" else IMAGENET
    defaults = {
        "classes": small["classes"] if imagenet else 10,
        "batch": small["batch"] if imagenet else 4,
        "repeats": 1 if imagenet else 3,
        "prec": "fp32" if args.device == "cpu" else "fp16",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if imagenet:
        if args.dataset == "oxford_pets":
            args.dataset = "imagenet"
        if args.experts is None:
            args.experts = small["experts"]
    if args.virtual is None:
        args.virtual = args.classes
    if args.eval_batch is None:
        args.eval_batch = args.batch
    if (
        min(args.classes, args.batch, args.eval_batch, args.repeats) < 1
        or args.virtual < 0
        or args.warmup < 0
    ):
        p.error(
            "--classes, --batch, --eval-batch and --repeats must be positive, --virtual and --warmup >= 0"
        )
    return args


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
    print(
        f"# Benchmark ({args.scale} scale) on {info.get('gpu', info['cpu'])}, torch {info['torch']}, "
        f"{info['threads']} threads, load average {load_before[0]:.2f}",
        flush=True,
    )

    clip_model = build_tiny_clip(**{**VIT_B16, "image_resolution": args.image_size})
    weight_bytes = {"fp32": sum(t.numel() * t.element_size() for t in clip_model.state_dict().values())}
    with tempfile.TemporaryDirectory() as tmp:
        clip_path = save_clip_state_dict(clip_model, os.path.join(tmp, "vit_b16_random.pt"))
        half = copy.deepcopy(clip_model)
        convert_weights(half)
        weight_bytes["fp16"] = sum(t.numel() * t.element_size() for t in half.state_dict().values())
        del clip_model, half
        bench = Bench(args, device, clip_path)
        result = {"args": vars(args), "machine": info, "memory_method": peak.method}
        if args.scale == "imagenet":
            result["imagenet"] = imagenet_scale(args, device, bench, peak, weight_bytes)
        else:
            rows, paired, inputs = trainer_table(args, device, bench, peak)
            result.update(trainers=rows, target_b_eval=paired, inputs=inputs, targets=targets(rows, paired))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["wall_s"] = round(time.time() - started, 1)

    print(
        f"\nMachine: {info}\nLoad average before/after: {load_before} / {result['load_average']['after']}; "
        f"peak memory: {peak.method}"
    )
    if args.scale == "imagenet":
        print_imagenet(result["imagenet"])
    else:
        print(
            f"Classes: {args.classes} (+{args.virtual} virtual for MoCoOp), names {result['inputs']['names']}"
        )
        print_trainer_tables(result["trainers"], result["targets"], args.eval_batch)
    path = args.json or os.path.join(REPO, "output", "benchmark", f"{args.scale}_{args.device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nWrote {path} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
