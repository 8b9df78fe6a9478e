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

dataset_script_args "$@"

for SEED in $SEEDS; do
    BASE_DIR=$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED
    NEW_DIR=$OUTPUT/base2new/test_new/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED

    train_cmd "$SEED" "$DATASET" "$CFG_FILE" "$BASE_DIR"
    run_in "$BASE_DIR" "${CMD[@]}" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base

    eval_cmd "$SEED" "$DATASET" "$CFG_FILE" "$NEW_DIR" "$BASE_DIR"
    run_in "$NEW_DIR" "${CMD[@]}" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new
done
