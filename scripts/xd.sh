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
SOURCE=$XD_SOURCE

require_args 2 "<Trainer> <config>" "$@"
TRAINER=$1 CFG=$2
check_setup
for T in $SOURCE $TARGETS; do
    dataset_config "$T" >/dev/null
done
CFG_FILE=$(trainer_config "$TRAINER" "$CFG" "$SOURCE")

for SEED in $SEEDS; do
    TRAIN_DIR=$OUTPUT/xd/train/$SOURCE/shots_$SHOTS/$TRAINER/$CFG/seed$SEED
    train_cmd "$SEED" "$SOURCE" "$CFG_FILE" "$TRAIN_DIR"
    run_in "$TRAIN_DIR" "${CMD[@]}" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES all

    for T in $TARGETS; do
        TEST_DIR=$OUTPUT/xd/test/$T/shots_$SHOTS/$TRAINER/$CFG/seed$SEED
        eval_cmd "$SEED" "$T" "$CFG_FILE" "$TEST_DIR" "$TRAIN_DIR"
        # A trained model is shaped by its training data's prompts (MoCoOp's experts,
        # MoPD's teacher pool), not by the target's.
        if ! is_zero_shot "$TRAINER"; then
            CMD+=(DATASET.SOURCE_CONFIG "$(dataset_config "$SOURCE")")
        fi
        run_in "$TEST_DIR" "${CMD[@]}"
    done
done
