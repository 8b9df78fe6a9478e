"""The benchmark's printed tables (the JSON file holds every number)."""

from tabulate import tabulate

from tools.benchmark.imagenet import GPU_BUDGET
from tools.benchmark.table import REFERENCES, ratio

MIB = 2**20
GIB = 2**30


def _ms(res, best=False):
    if res and res.get("oom"):
        return "OOM"
    if not res or res["median_s"] is None:
        return "–"
    text = f"{1000 * res['median_s']:.0f}"
    return text + f" ({1000 * res['min_s']:.0f})" if best else text


def _img_s(res, batch):
    if res.get("oom"):
        return "OOM"
    if res["median_s"] is None:
        return "–"
    return f"{batch / res['median_s']:.2f} ({batch / res['min_s']:.2f})"


def _x(slow, fast):
    value = ratio(slow, fast)
    return "–" if value is None else f"{value:.2f}x"


def _mib(res):
    return "–" if not res or res.get("peak_bytes") is None else f"{res['peak_bytes'] / MIB:.0f}"


def print_trainer_tables(rows, goals, eval_batch):
    main = []
    for name, row in rows.items():
        enc = row["text_encoder"]
        main.append(
            [
                name,
                row["prompts_per_step"],
                row["tokens_per_step"]["default"],
                f"{'trunc' if enc['TRUNCATE'] else '77'}/{enc['ATTENTION']}/chunk {enc['CHUNK_SIZE']}"
                + ("/ckpt" if enc["CHECKPOINT"] else ""),
                _ms(row.get("train_step"), best=True),
                _mib(row.get("train_step")),
                _img_s(row["eval"], eval_batch),
                _mib(row["eval"]),
                _ms(row.get("cache_build")),
            ]
        )
    print("\n### Trainers (default speed options; times: median (fastest call))\n")
    print(
        tabulate(
            main,
            headers=[
                "trainer",
                "prompts/step",
                "tokens/step",
                "text encoder",
                "train step ms",
                "train peak MiB",
                "eval img/s",
                "eval peak MiB (with cache build)",
                "cache build ms",
            ],
            tablefmt="github",
        )
    )
    opts = []
    for name, row in rows.items():
        if "text_fwd_bwd" not in row:
            continue
        for ref in REFERENCES:
            if ref not in row["text_fwd_bwd"]:
                continue
            fast_label = "truncated" if ref == "77-token" else "fused"
            for kind, label in (("text_fwd_bwd", "fwd+bwd"), ("text_fwd", "fwd")):
                if kind not in row:
                    continue
                fast, slow = row[kind]["default"], row[kind][ref]
                opts.append(
                    [
                        name,
                        f"{fast_label} vs {ref} ({label})",
                        _ms(fast),
                        _ms(slow),
                        _x(slow["median_s"], fast["median_s"]),
                        _x(slow["min_s"], fast["min_s"]),
                        _mib(fast),
                        _mib(slow),
                    ]
                )
        if "per_batch" in row:
            fast, slow = row["eval"], row["per_batch"]
            opts.append(
                [
                    name,
                    "cached vs per-batch eval (ms per batch)",
                    _ms(fast),
                    _ms(slow),
                    _x(slow["median_s"], fast["median_s"]),
                    _x(slow["min_s"], fast["min_s"]),
                    _mib(fast),
                    _mib(slow),
                ]
            )
    print(
        "\n### Speed options against their reference paths (text encoding of one training step, "
        "and evaluation)\n"
    )
    print(
        tabulate(
            opts,
            headers=[
                "trainer",
                "option vs reference",
                "option ms",
                "reference ms",
                "speed-up",
                "speed-up (fastest calls)",
                "option peak MiB",
                "reference peak MiB",
            ],
            tablefmt="github",
        )
    )
    print_targets(goals)


def print_targets(goals):
    if not goals:
        return
    print("\n### Targets\n")
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    table = [
        [
            k,
            g["target"],
            g["value"],
            verdict[g["met"]],
            ", ".join(
                f"{x}: {g[x]}"
                for x in ("forward_only", "token_ratio", "step_ratio", "text_only", "calls", "best_calls")
                if x in g
            ),
        ]
        for k, g in goals.items()
    ]
    print(tabulate(table, headers=["", "target", "measured", "", "details"], tablefmt="github"))


def print_imagenet(res):
    pt = res["per_token_per_layer_bytes"]
    print("\n### Activations kept for backward, bytes per token and residual block\n")
    print(
        tabulate(
            [
                [k, v["text_analytic"], f"{v['text_autograd']:.0f}", f"{v['image_autograd']:.0f}"]
                for k, v in pt.items()
            ],
            headers=["weights", "text (analytic)", "text (autograd)", "image, LN trained (autograd)"],
            tablefmt="github",
        )
    )
    full = res["full_scale"]
    print(
        f"\n### MoCoOp at ImageNet scale: {full['experts']} experts x ({full['classes']} + {full['virtual']}) "
        f"text classes, batch {full['batch']}, fp16 (estimate; class names {res['names']['mean_bpe_tokens']} "
        f"BPE tokens on average, at most {res['names']['max_bpe_tokens']})\n"
    )
    table = []
    for r in full["rows"]:
        table.append(
            [
                r["CHUNK_SIZE"],
                r["CHECKPOINT"],
                r["rows"],
                r["positions"],
                r["to_eot"],
                f"{r['parts']['text activations'] / GIB:.1f}",
                f"{r['estimate_bytes'] / GIB:.1f}",
                f"{r['release_extra_bytes'] / GIB:.1f}",
                "yes" if r["fits_80GB"] else "no",
            ]
        )
    print(
        tabulate(
            table,
            headers=[
                "CHUNK_SIZE",
                "CHECKPOINT",
                "prompts",
                "positions run",
                "positions to EOT",
                "text activations GiB",
                "step total GiB",
                "+ release image GiB",
                f"fits {GPU_BUDGET:.0%} of 80 GB",
            ],
            tablefmt="github",
        )
    )
    m = res["measured_scale"]
    print(
        f"\n### Measured: {m['experts']} experts x ({m['classes']} + {m['virtual']}) text classes, batch "
        f"{m['batch']}, {m['prec']}\n"
    )
    ref = m["rows"][0]["peak_bytes"]
    table = []
    for r in m["rows"]:
        peak_b = r["peak_bytes"]
        table.append(
            [
                r["CHUNK_SIZE"],
                r["CHECKPOINT"],
                r["positions"],
                "OOM" if r["oom"] else ("–" if peak_b is None else f"{peak_b / MIB:.0f}"),
                f"{r['estimate_bytes'] / MIB:.0f}",
                "–" if not (peak_b and ref) else f"{ref / peak_b:.2f}x",
                "–" if r["median_s"] is None else f"{r['median_s']:.2f}",
            ]
        )
    print(
        tabulate(
            table,
            headers=[
                "CHUNK_SIZE",
                "CHECKPOINT",
                "positions run",
                "peak MiB",
                "estimate MiB",
                "reduction",
                "step s",
            ],
            tablefmt="github",
        )
    )
