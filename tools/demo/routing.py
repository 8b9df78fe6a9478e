"""Per-style routing of a trained MoCoOp model on the demo world.

    python -m tools.demo_routing <train_base run dir> [--root data] [--split base|new]

The demo world's file names carry each image's rendering style, and expert g of the demo
config is initialised from the template of style g. For every style this prints how often
the style's own expert is among the top-K of the trained router and of the hard-prompt
reference W_hard (the router loss's target, with the run's ROUTER_TARGET and temperature),
how peaked W_hard is (its mean largest probability), and the accuracy. It reads the run's
config.yaml, so it evaluates the model exactly as trained.
"""

import argparse
import collections
import os
import re

import torch

from tools.demo.world import STYLES

STYLE_IN_NAME = re.compile(r"_([a-z]+)\.png$")


def routing_report(run_dir, root, split):
    import trainers

    # The run's resolved config, with this data root, split and output folder on top.
    cfg = trainers.make_cfg(
        "MoCoOp",
        config_file=os.path.join(run_dir, "config.yaml"),
        opts=["DATASET.SUBSAMPLE_CLASSES", split],
        root=root,
        output_dir=os.path.join(run_dir, f"routing_{split}"),
    )
    trainer = trainers.build_trainer(cfg)
    trainer.load_model(run_dir)
    model = trainer.model.eval()
    counts = collections.defaultdict(collections.Counter)
    with torch.no_grad(), model.cached_text_features():
        for batch in trainer.test_loader:
            v = model.encode_image(batch["img"])
            logits, routing = model.classify_features(v)
            target = model.router_target(v, batch["label"])
            for i, path in enumerate(batch["impath"]):
                style = STYLES.index(STYLE_IN_NAME.search(path).group(1))
                c = counts[style]
                c["images"] += 1
                c["router"] += style in routing.index[i].tolist()
                c["reference"] += style in target[i].topk(model.top_k).indices.tolist()
                c["peak"] += target[i].max().item()
                c["correct"] += int(logits[i].argmax() == batch["label"][i])
    return counts, model.top_k


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_routing", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run_dir", help="a finished MoCoOp training run on the demo world")
    parser.add_argument("--root", default="data", help="DATASET.ROOT holding demo_world/")
    parser.add_argument(
        "--split",
        default="base",
        choices=("base", "new"),
        help="the test images of the base classes (default) or of the new ones",
    )
    args = parser.parse_args(argv)
    counts, k = routing_report(args.run_dir, args.root, args.split)
    print(
        f"{'style':10s} {'own expert in router top-' + str(k):>26s} {'in W_hard top-' + str(k):>16s} "
        f"{'max W_hard':>11s} {'accuracy':>9s}"
    )
    total = collections.Counter()
    for style, c in sorted(counts.items()):
        total.update(c)
        n = c["images"]
        print(
            f"{STYLES[style]:10s} {c['router'] / n:26.1%} {c['reference'] / n:16.1%} {c['peak'] / n:11.2f} "
            f"{c['correct'] / n:9.1%}"
        )
    n = total["images"]
    print(
        f"{'all':10s} {total['router'] / n:26.1%} {total['reference'] / n:16.1%} {total['peak'] / n:11.2f} "
        f"{total['correct'] / n:9.1%}"
    )


if __name__ == "__main__":
    main()
