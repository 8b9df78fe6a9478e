#!/usr/bin/env bash
# Cross-dataset transfer and domain generalisation: for each seed, train once on
# ImageNet (all classes, SHOTS shots), then evaluate that model on every target.
# The targets are evaluated with the config the model was trained with (the
# ImageNet one when a per-dataset config exists), so the model is built as trained.
#
#   DATA=/path/to/data bash scripts/xd.sh <Trainer> <config>
#
# env: OUTPUT (output), SEEDS ("1 2 3"), SHOTS (16), DRY_RUN=1, PYTHON (python3),
#      TARGETS (the 10 other datasets and the 4 ImageNet variants)
set -euo pipefail
source "$(dirname "$0")/_common.sh"
TARGETS=${TARGETS:-"$XD_TARGETS $DG_TARGETS"}

require_args 2 "<Trainer> <config>" "$@"
check_setup
# shellcheck disable=SC2086 # TARGETS is a list of words
run_plan xd "$1" "$2" "$SHOTS" $TARGETS
