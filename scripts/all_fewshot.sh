#!/usr/bin/env bash
# scripts/fewshot.sh on every dataset of the benchmark, one after the other;
# stops at the first failure (re-running skips what finished).
#
#   DATA=/path/to/data bash scripts/all_fewshot.sh <Trainer> <config>
#
# env: DATASETS (the 11 datasets) and everything scripts/fewshot.sh reads
set -euo pipefail
source "$(dirname "$0")/_common.sh"
for_each_dataset fewshot.sh "$@"
