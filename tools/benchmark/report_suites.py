"""The printed tables of the targets, precision and gpu suites."""

from tabulate import tabulate

from tools.benchmark.report import mib, ms, print_imagenet, speedup

VERDICT = {True: "met", False: "NOT met", None: "not measured"}
DETAILS = (
    "token_bound",
    "weighted_token_ratio",
    "fastest_calls",
    "text_only",
    "ceiling",
    "tokens",
    "test_batches",
)


def print_targets(goals, measured):
    t4 = measured["T4"]
    print(
        f"\nT4: {t4['experts']} experts x {t4['classes']} classes, {t4['test_images']} test images in "
        f"{t4['test_batches']} batches of {t4['batch']}, extrapolated from "
        f"{len(t4['times']['eval']['times_s'])} timed batch(es) per path; test set s: {t4['test_set_s']}"
    )
    mem = measured["memory"]
    print(f"\nMemory: MoCoOp, {mem['classes']} + {mem['virtual']} text classes, batch {mem['batch']}")
    table = [
        [k, r["trainer"], " ".join(r["opts"]) or "defaults", r["tokens"], mib(r)]
        for k, r in mem["rows"].items()
    ]
    print(
        tabulate(table, headers=["", "trainer", "options", "tokens/step", "step peak MiB"], tablefmt="github")
    )
    print("\n### Targets\n")
    table = [
        [k, g["target"], g["value"], VERDICT[g["met"]], ", ".join(f"{x}: {g[x]}" for x in DETAILS if x in g)]
        for k, g in goals.items()
    ]
    print(tabulate(table, headers=["", "target", "measured", "", "details"], tablefmt="github"))


def print_precision(rows, inputs):
    first, *others = inputs["precs"]
    print(f"\n### {' / '.join(others)} against {first} (times: median (fastest call))\n")
    table = []
    for name, row in rows.items():
        for prec in others:
            steps, evals = row.get("train_step", {}), row["eval"]
            builds = row.get("cache_build", {})
            diffs = row["losses"]["relative_difference"][prec]
            table.append(
                [name, prec, ms(steps.get(first), True), ms(steps.get(prec), True),
                 speedup(steps.get(first), steps.get(prec)), ms(evals[first], True), ms(evals[prec], True),
                 speedup(evals[first], evals[prec]), speedup(builds.get(first), builds.get(prec)),
                 mib(steps.get(first)), mib(steps.get(prec)),
                 "yes" if row["losses"]["all_terms_finite"] else "NO",
                 ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())]
            )  # fmt: skip
    headers = [
        "trainer", "mode", f"step ms {first}", "step ms", "step speed-up", f"eval ms {first}", "eval ms",
        "eval speed-up", "cache build speed-up", f"step MiB {first}", "step MiB", "all terms",
        "loss terms: difference / fp32 loss",
    ]  # fmt: skip
    print(tabulate(table, headers=headers, tablefmt="github"))


def print_gpu(result):
    print("\n### Trainers at SUN397 sizes, configs' batches (times: median (fastest call))\n")
    table = []
    for name, row in result["trainers"].items():
        for prec, tokens in row["tokens_per_step"].items():
            step = row.get("train_step", {}).get(prec)
            table.append(
                [name, prec, row["batch"], tokens, ms(step, True), mib(step), row["eval_batch"],
                 ms(row["eval"][prec], True)]
            )  # fmt: skip
    headers = ["trainer", "PREC", "batch", "tokens/step", "step ms", "step peak MiB", "eval batch", "eval ms"]
    print(tabulate(table, headers=headers, tablefmt="github"))
    print("\n### Loss terms against fp32 (difference / the fp32 loss)\n")
    table = []
    for name, res in result["loss_parity"].items():
        for prec, diffs in res["relative_difference"].items():
            terms = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
            table.append([name, prec, "yes" if res["all_terms_finite"] else "NO", terms])
    print(
        tabulate(table, headers=["trainer", "PREC", "all terms", "difference / fp32 loss"], tablefmt="github")
    )
    print_imagenet(result["imagenet"])
