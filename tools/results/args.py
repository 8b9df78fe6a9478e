"""Command-line arguments shared by python -m tools.results, tools.plots and tools.demo.table.

Lists are written as the sweep and the protocol tools take them, `--seeds 1 2 3`; one quoted
word, `--seeds "1 2 3"` (the form of earlier versions and of the scripts' SEEDS variable), is
read the same way.
"""

import argparse


class _Words(argparse.Action):
    """nargs="+" whose values may also be one quoted, space-separated word; `convert` checks each
    word and returns its value (None: not valid)."""

    def __init__(self, *args, convert=str, expected="", **kwargs):
        self.convert, self.expected = convert, expected
        super().__init__(*args, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        words = [word for value in values for word in value.split()]
        converted = [self.convert(word) for word in words]
        bad = [word for word, value in zip(words, converted) if value is None]
        if bad or not words:
            parser.error(
                f"{option_string}: expected {self.expected}, got {' '.join(map(repr, bad or values))}"
            )
        setattr(namespace, self.dest, converted)


def _seed(word):
    return int(word) if word.isdigit() else None


def add_seeds_argument(parser, help_text="seeds every group should have"):
    parser.add_argument(
        "--seeds",
        action=_Words,
        convert=_seed,
        expected="non-negative integers such as 1 2 3",
        default=[1, 2, 3],
        metavar="SEED",
        help=f"{help_text} (default: 1 2 3)",
    )


def add_datasets_argument(parser, default, help_text):
    parser.add_argument(
        "--datasets",
        action=_Words,
        expected="dataset names",
        default=list(default),
        metavar="DATASET",
        help=help_text,
    )


def add_curve_argument(parser):
    parser.add_argument(
        "--fewshot-curve",
        action="append",
        default=[],
        metavar="TRAINER=CFG1+CFG2",
        help="show the few-shot runs of these configs of TRAINER as one curve, each shot count "
        "from the config that ran it (repeatable); e.g. CoOp=vit_b16_ep50+vit_b16_ep100+vit_b16_ep200",
    )
