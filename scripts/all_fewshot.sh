#!/usr/bin/env bash
# scripts/fewshot.sh on every dataset of the benchmark, one after the other;
# stops at the first failure (re-running skips what finished). Every dataset's
# configs are checked before the first run.
#
#   DATA=/path/to/data bash scripts/all_fewshot.sh <Trainer> <config>
#
# env: DATASETS (the 11 datasets) and everything scripts/fewshot.sh reads
set -euo pipefail
source "$(dirname "$0")/_common.sh"
SHOTS_LIST=${SHOTS_LIST:-"1 2 4 8 16"}

require_args 2 "<Trainer> <config>" "$@"
check_setup
# shellcheck disable=SC2086 # DATASETS is a list of words
run_plan fewshot "$1" "$2" "$SHOTS_LIST" ${DATASETS:-$BENCHMARK_DATASETS}
