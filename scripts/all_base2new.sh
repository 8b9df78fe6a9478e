#!/usr/bin/env bash
# scripts/base2new.sh on every dataset of the benchmark, one after the other;
# stops at the first failure (re-running skips what finished).
#
#   DATA=/path/to/data bash scripts/all_base2new.sh <Trainer> <config>
#
# env: DATASETS (the 11 datasets) and everything scripts/base2new.sh reads
set -euo pipefail
source "$(dirname "$0")/_common.sh"
for_each_dataset base2new.sh "$@"
