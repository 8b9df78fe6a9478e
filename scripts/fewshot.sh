#!/usr/bin/env bash
# Few-shot learning on one dataset: all classes, each shot count and seed,
# tested on all classes. ZeroshotCLIP is evaluated only.
#
#   DATA=/path/to/data bash scripts/fewshot.sh <dataset> <Trainer> <config>
#
# env: OUTPUT (output), SEEDS ("1 2 3"), SHOTS_LIST ("1 2 4 8 16"), DRY_RUN=1, PYTHON (python3)
set -euo pipefail
source "$(dirname "$0")/_common.sh"
SHOTS_LIST=${SHOTS_LIST:-"1 2 4 8 16"}

require_args 3 "<dataset> <Trainer> <config>" "$@"
check_setup
run_plan fewshot "$2" "$3" "$SHOTS_LIST" "$1"
