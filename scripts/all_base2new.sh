#!/usr/bin/env bash
# scripts/base2new.sh on every dataset of the benchmark, one after the other;
# stops at the first failure (re-running skips what finished). Every dataset's
# configs are checked before the first run.
#
#   DATA=/path/to/data bash scripts/all_base2new.sh <Trainer> <config>
#
# env: DATASETS (the 11 datasets) and everything scripts/base2new.sh reads
set -euo pipefail
source "$(dirname "$0")/_common.sh"

require_args 2 "<Trainer> <config>" "$@"
check_setup
# shellcheck disable=SC2086 # DATASETS is a list of words
run_plan base2new "$1" "$2" "$SHOTS" ${DATASETS:-$BENCHMARK_DATASETS}
