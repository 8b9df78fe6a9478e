#!/usr/bin/env bash
# Base-to-new generalisation on one dataset: for each seed, train on the base
# classes, then evaluate the finished model on the new classes (eval only).
# ZeroshotCLIP is evaluated on base and on new, never trained.
#
#   DATA=/path/to/data bash scripts/base2new.sh <dataset> <Trainer> <config>
#
# env: OUTPUT (output), SEEDS ("1 2 3"), SHOTS (16), DRY_RUN=1, PYTHON (python3)
set -euo pipefail
source "$(dirname "$0")/_common.sh"

require_args 3 "<dataset> <Trainer> <config>" "$@"
check_setup
run_plan base2new "$2" "$3" "$SHOTS" "$1"
