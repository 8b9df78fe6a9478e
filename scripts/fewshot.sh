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

dataset_script_args "$@"

for K in $SHOTS_LIST; do
    for SEED in $SEEDS; do
        DIR=$OUTPUT/fewshot/$DATASET/shots_$K/$TRAINER/$CFG/seed$SEED
        train_cmd "$SEED" "$DATASET" "$CFG_FILE" "$DIR"
        run_in "$DIR" "${CMD[@]}" DATASET.NUM_SHOTS "$K" DATASET.SUBSAMPLE_CLASSES all
    done
done
