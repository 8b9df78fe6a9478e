"""Per-style routing of a trained model that routes (MoCoOp's experts) on the demo world.

    python -m tools.demo_routing <train_base run dir> [--root data] [--split base|new]

The demo world's file names carry each image's rendering style, and candidate g of the demo
configs (expert g) is initialised from the template of style g. For every style this prints how
often the style's own candidate is among the top-K of the trained router and of the model's
reference routing where it has one (`PromptedCLIP.reference_routing`: MoCoOp's hard-prompt
reference W_hard, the router loss's target, with the run's ROUTER_TARGET and temperature), how
peaked that reference is (its mean largest probability), and the accuracy. It reads the run's
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

    config = os.path.join(run_dir, "config.yaml")
    name = trainers.read_config_file(config).get("TRAINER", {}).get("NAME")
    # The run's resolved config, with this data root, split and output folder on top.
    cfg = trainers.make_cfg(
        name,
        config_file=config,
        opts=["DATASET.SUBSAMPLE_CLASSES", split],
        root=root,
        output_dir=os.path.join(run_dir, f"routing_{split}"),
    )
    trainer = trainers.build_trainer(cfg)
    trainer.load_model(run_dir)
    model = trainer.model.eval()
    if not model.routing_names:
        raise SystemExit(f"{run_dir} is a {name} run, whose model does not route")
    counts = collections.defaultdict(collections.Counter)
    with torch.no_grad(), model.cached_text_features():
        for batch in trainer.test_loader:
            v = model.encode_image(batch["img"])
            logits, routing = model.classify_features(v)
            target = model.reference_routing(v, batch["label"])
            if target is None:  # no reference: its columns say 0
                target = torch.zeros_like(v[:, : len(model.routing_names)])
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
    parser.add_argument("run_dir", help="a finished training run on the demo world whose model routes")
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
