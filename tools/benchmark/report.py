"""The benchmark's printed tables for the trainer table and the sizes (the JSON file holds
every number)."""

from tabulate import tabulate

from tools.benchmark.imagenet import GPU_BUDGET
from tools.benchmark.paths import COMPARISONS

MIB = 2**20
GIB = 2**30


def ms(res, best=False):
    if res is None:
        return "–"
    if res.get("oom"):
        return "OOM"
    if res.get("skipped"):
        return "skipped"
    if res["median_s"] is None:
        return "–"
    text = f"{1000 * res['median_s']:.0f}"
    return text + f" ({1000 * res['min_s']:.0f})" if best else text


def seconds(value):
    return "–" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def img_s(res, batch):
    if res.get("oom") or res["median_s"] is None:
        return ms(res)
    return f"{batch / res['median_s']:.2f} ({batch / res['min_s']:.2f})"


def speedup(slow, fast, key="median_s"):
    if not slow or not fast or slow.get(key) is None or not fast.get(key):
        return "–"
    return f"{slow[key] / fast[key]:.2f}x"


def mib(res):
    return "–" if not res or res.get("peak_bytes") is None else f"{res['peak_bytes'] / MIB:.0f}"


def encoder_label(enc):
    text = f"{'trunc' if enc['TRUNCATE'] else '77'}{'+shared' if enc['SHARE_PREFIX'] else ''}"
    text += f"/{enc['ATTENTION']}/chunk {enc['CHUNK_SIZE']}"
    return text + ("/ckpt" if enc["CHECKPOINT"] else "")


def print_trainer_tables(rows, inputs, args):
    print(f"Classes: {args.classes} (+{args.virtual} virtual for MoCoOp), names {inputs['names']}")
    main = []
    for name, row in rows.items():
        steps = row.get("train_step", {})
        main.append(
            [
                name,
                row["prompts_per_step"],
                " / ".join(str(row["tokens_per_step"].get(p, "–")) for p in ("shared", "truncated")),
                encoder_label(row["text_encoder"]),
                ms(steps.get("shared"), best=True),
                ms(steps.get("truncated"), best=True),
                speedup(steps.get("truncated"), steps.get("shared")),
                mib(steps.get("shared")),
                img_s(row["eval"], args.eval_batch),
                ms(row.get("cache_build")),
            ]
        )
    print("\n### Trainers (times: median (fastest call))\n")
    headers = [
        "trainer",
        "prompts/step",
        "tokens/step shared / truncated",
        "text encoder",
        "step ms shared",
        "step ms truncated",
        "step speed-up",
        "step peak MiB",
        "eval img/s (cached)",
        "cache build ms",
    ]
    print(tabulate(main, headers=headers, tablefmt="github"))
    opts = []
    for name, row in rows.items():
        for kind, label in (("text_fwd_bwd", "fwd+bwd"), ("text_fwd", "fwd")):
            for fast, slow, what in COMPARISONS if kind in row else ():
                res = row[kind]
                if fast in res and slow in res:
                    tokens = row["tokens_per_step"]
                    opts.append(
                        option_row(
                            name, f"{what} ({label})", res[fast], res[slow], tokens[fast], tokens[slow]
                        )
                    )
        if "per_batch" in row:
            opts.append(
                option_row(name, "cached vs per-batch eval (per batch)", row["eval"], row["per_batch"])
            )
    print(
        "\n### Text-encoder paths against their references (text encoding of one training step; evaluation)\n"
    )
    headers = ["trainer", "option vs reference", "tokens", "option ms", "reference ms", "speed-up",
               "speed-up (fastest calls)", "option MiB", "reference MiB"]  # fmt: skip
    print(tabulate(opts, headers=headers, tablefmt="github"))


def option_row(name, what, fast, slow, fast_tokens=None, slow_tokens=None):
    tokens = (
        "–" if fast_tokens is None else f"{fast_tokens} / {slow_tokens} = {slow_tokens / fast_tokens:.2f}"
    )
    return [
        name,
        what,
        tokens,
        ms(fast),
        ms(slow),
        speedup(slow, fast),
        speedup(slow, fast, "min_s"),
        mib(fast),
        mib(slow),
    ]


def print_size_tables(rows, inputs):
    print(f"Test set: {inputs['test_images']} images; names {inputs['names']}")
    steps = []
    for name, row in rows.items():
        res = row.get("train_step", {})
        for path, tokens in row["tokens_per_step"].items():
            if not res:
                continue  # nothing to train
            steps.append(
                [name, row["batch"], path, tokens, ms(res.get(path), best=True), mib(res.get(path)),
                 speedup(res.get("truncated"), res.get(path)), speedup(res.get("77-token"), res.get(path))]
            )  # fmt: skip
    print("\n### Training step per text-encoder path (times: median (fastest call))\n")
    headers = [
        "trainer",
        "batch",
        "path",
        "tokens/step",
        "step ms",
        "peak MiB",
        "vs truncated",
        "vs 77-token",
    ]
    print(tabulate(steps, headers=headers, tablefmt="github"))
    evals = []
    for name, row in rows.items():
        totals = row["test_set_s"]
        per_batch, builds = row.get("per_batch", {}), row.get("cache_build", {})
        for path in row["tokens_per_step"]:
            full = totals["per_batch"].get(path)
            evals.append(
                [name, path, row["eval_tokens_per_batch"][path], ms(row.get("eval")), ms(per_batch.get(path)),
                 ms(builds.get(path)), seconds(totals["cached"].get(path)), seconds(full),
                 "–" if not totals["default"] or full is None else f"{full / totals['default']:.2f}x"]
            )  # fmt: skip
    first = next(iter(rows.values()), {})
    timed = max((len(r["times_s"]) for r in first.get("per_batch", {}).values()), default=0)
    print(
        f"\n### Full test-set evaluation: {first.get('test_batches')} batches of {first.get('eval_batch')}, "
        f"extrapolated from {timed} timed batch(es) per path\n"
    )
    headers = ["trainer", "text path", "text tokens per batch", "cached batch ms", "per-batch ms", "cache build ms",
               "test set s, cached", "test set s, per batch", "per batch / default"]  # fmt: skip
    print(tabulate(evals, headers=headers, tablefmt="github"))


def print_imagenet(res):
    pt = res["per_token_per_layer_bytes"]
    print("\n### Activations kept for backward, bytes per token and residual block\n")
    print(
        tabulate(
            [
                [
                    k,
                    v["text_analytic"],
                    f"{v['text_autograd']:.0f}",
                    f"{v['text_shared_autograd']:.0f}",
                    f"{v['image_autograd']:.0f}",
                ]
                for k, v in pt.items()
            ],
            headers=[
                "weights",
                "text (analytic)",
                "text (autograd)",
                "text, packed (autograd)",
                "image, LN trained (autograd)",
            ],
            tablefmt="github",
        )
    )
    full = res["full_scale"]
    print(
        f"\n### MoCoOp at ImageNet scale: {full['experts']} experts x ({full['classes']} + {full['virtual']}) "
        f"text classes, batch {full['batch']}, fp16 (estimate; class names {res['names']['mean_bpe_tokens']} "
        f"BPE tokens on average, at most {res['names']['max_bpe_tokens']})\n"
    )
    table = [
        [r["SHARE_PREFIX"], r["CHUNK_SIZE"], r["CHECKPOINT"], r["rows"], r["positions"], r["to_eot"],
         f"{r['parts']['text activations'] / GIB:.1f}", f"{r['estimate_bytes'] / GIB:.1f}",
         f"{r['release_extra_bytes'] / GIB:.1f}", "yes" if r["fits_80GB"] else "no"]
        for r in full["rows"]
    ]  # fmt: skip
    headers = ["SHARE_PREFIX", "CHUNK_SIZE", "CHECKPOINT", "prompts", "positions run", "prompt lengths",
               "text activations GiB", "step total GiB", "+ release image GiB", f"fits {GPU_BUDGET:.0%} of 80 GB"]  # fmt: skip
    print(tabulate(table, headers=headers, tablefmt="github"))
    m = res["measured_scale"]
    print(
        f"\n### Measured: {m['experts']} experts x ({m['classes']} + {m['virtual']}) text classes, batch "
        f"{m['batch']}, {m['prec']}\n"
    )
    table = [
        [r["SHARE_PREFIX"], r["CHUNK_SIZE"], r["CHECKPOINT"], r["positions"], ms_peak(r),
         f"{r['estimate_bytes'] / MIB:.0f}", seconds(r["median_s"])]
        for r in m["rows"]
    ]  # fmt: skip
    headers = [
        "SHARE_PREFIX",
        "CHUNK_SIZE",
        "CHECKPOINT",
        "positions run",
        "peak MiB",
        "estimate MiB",
        "step s",
    ]
    print(tabulate(table, headers=headers, tablefmt="github"))


def ms_peak(row):
    if row.get("oom"):
        return "OOM"
    if row.get("skipped"):
        return "skipped"
    return mib(row)
