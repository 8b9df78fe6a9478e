# Helpers shared by the protocol scripts. Sourced (never run) by scripts/*.sh,
# which set `set -euo pipefail` themselves. See docs/PROTOCOLS.md.

OUTPUT=${OUTPUT:-output}
SEEDS=${SEEDS:-"1 2 3"}
SHOTS=${SHOTS:-16}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3}

# The dataset lists of tools/protocols.py (tests/test_scripts.py checks that they agree): the 11
# datasets of the base-to-new and few-shot tables (CoOp's order), the cross-dataset source and
# targets (the benchmark minus the source), and the DG targets.
BENCHMARK_DATASETS="imagenet caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101"
XD_SOURCE=imagenet
XD_TARGETS=${BENCHMARK_DATASETS#"$XD_SOURCE "}
DG_TARGETS="imagenetv2 imagenet_sketch imagenet_a imagenet_r"

die() {
    echo "error: $*" >&2
    exit 1
}

# require_args N USAGE ARGS...: exit with the usage line unless ARGS are N words.
require_args() {
    local n=$1 usage=$2
    shift 2
    if [ $# -ne "$n" ]; then
        echo "usage: DATA=/path/to/data bash $0 $usage" >&2
        exit 2
    fi
}

# check_setup: the checks every script needs before it builds a command.
check_setup() {
    if [ ! -f train.py ] || [ ! -d configs ]; then
        die "run the scripts from the repository root (no train.py and configs/ in $PWD)"
    fi
    if [ -z "${DATA:-}" ]; then
        die "DATA is not set: DATA=/path/to/data bash $0 ... (the folder holding the datasets in CoOp's layout)"
    fi
    if [ "$DRY_RUN" != 1 ] && [ ! -d "$DATA" ]; then
        die "DATA=$DATA is not a directory"
    fi
    local n
    for n in $SEEDS; do
        [[ $n =~ ^[0-9]+$ ]] || die "SEEDS must be non-negative integers, got '$n'"
    done
    for n in $SHOTS ${SHOTS_LIST:-}; do
        [[ $n =~ ^[1-9][0-9]*$ ]] || die "SHOTS/SHOTS_LIST must be positive integers, got '$n'"
    done
}

# dataset_config NAME: path of the dataset config, or an error.
dataset_config() {
    local f="configs/datasets/$1.yaml"
    [ -f "$f" ] || die "unknown dataset '$1': $f does not exist"
    echo "$f"
}

# trainer_config TRAINER CONFIG DATASET...: the trainer config of each dataset's runs, one
# line each (tools/protocols.py's rule: configs/trainers/T/C/D.yaml when it exists, else
# configs/trainers/T/C.yaml), or an error naming both paths.
trainer_config() {
    "$PYTHON" -m tools.protocols trainer-config "$@" || exit 1
}

# is_zero_shot TRAINER: true for trainers that are evaluated only, never trained.
is_zero_shot() {
    [ "$1" = ZeroshotCLIP ]
}

# is_finished DIR: DIR holds a run whose newest log ends with a result block that
# has an accuracy: tools/results/runlog.py's rule, which tools.results applies too.
is_finished() {
    [ -d "$1" ] || return 1
    local rc=0
    "$PYTHON" -c 'import sys; from tools.results.runlog import read_run
sys.exit(0 if read_run(sys.argv[1]).finished else 3)' "$1" || rc=$?
    case $rc in
        0) return 0 ;;
        3) return 1 ;;
        *) die "cannot tell whether $1 is finished (tools/results/runlog.py failed with exit code $rc)" ;;
    esac
}

# require_model DIR: a finished training run left */model.pth.tar-<epoch> there.
require_model() {
    [ "$DRY_RUN" = 1 ] && return 0
    compgen -G "$1/*/model.pth.tar-*" >/dev/null ||
        die "no trained model in $1 (expected */model.pth.tar-*): its training did not finish"
}

# print_cmd ARGS...: one shell-quoted line, the exact command.
print_cmd() {
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
}

# run_in DIR CMD...: run CMD (which writes into DIR) unless DIR holds a finished
# run. An unfinished DIR is handed to train.py again, which resumes it. With
# DRY_RUN=1 the command is only printed.
run_in() {
    local dir=$1
    shift
    if is_finished "$dir"; then
        echo "# skip finished: $dir"
        return 0
    fi
    if [ -d "$dir" ]; then
        echo "# unfinished, train.py resumes it: $dir"
    fi
    print_cmd "$@"
    if [ "$DRY_RUN" != 1 ]; then
        "$@"
    fi
}

# train_py SEED DATASET CONFIG_FILE OUTDIR: sets CMD to the train.py prefix
# shared by every run.
train_py() {
    CMD=("$PYTHON" train.py --root "$DATA" --seed "$1" --trainer "$TRAINER"
        --dataset-config-file "configs/datasets/$2.yaml" --config-file "$3" --output-dir "$4")
}

# train_cmd SEED DATASET CONFIG_FILE OUTDIR: sets CMD to train into OUTDIR (a
# zero-shot trainer is evaluated instead); callers append KEY VALUE options.
train_cmd() {
    train_py "$@"
    if is_zero_shot "$TRAINER"; then
        CMD+=(--eval-only)
    fi
}

# eval_cmd SEED DATASET CONFIG_FILE OUTDIR MODEL_DIR: sets CMD to evaluate the
# finished run in MODEL_DIR into OUTDIR (a zero-shot trainer has no model to load).
eval_cmd() {
    train_py "$1" "$2" "$3" "$4"
    if ! is_zero_shot "$TRAINER"; then
        require_model "$5"
        CMD+=(--model-dir "$5")
    fi
    CMD+=(--eval-only)
}

# dataset_script_args ARGS...: the checks of a one-dataset script
# (<dataset> <Trainer> <config>); sets DATASET, TRAINER, CFG and CFG_FILE.
dataset_script_args() {
    require_args 3 "<dataset> <Trainer> <config>" "$@"
    DATASET=$1 TRAINER=$2 CFG=$3
    check_setup
    dataset_config "$DATASET" >/dev/null
    CFG_FILE=$(trainer_config "$TRAINER" "$CFG" "$DATASET")
}

# for_each_dataset SCRIPT TRAINER CONFIG: bash scripts/SCRIPT <dataset> TRAINER
# CONFIG for each dataset of DATASETS (default: the 11). Every dataset's configs
# are checked first, so a typo fails before hours of training, not after.
for_each_dataset() {
    local script=$1 d
    shift
    require_args 2 "<Trainer> <config>" "$@"
    check_setup
    for d in ${DATASETS:-$BENCHMARK_DATASETS}; do
        dataset_config "$d" >/dev/null
    done
    trainer_config "$1" "$2" ${DATASETS:-$BENCHMARK_DATASETS} >/dev/null
    for d in ${DATASETS:-$BENCHMARK_DATASETS}; do
        bash "$(dirname "$0")/$script" "$d" "$1" "$2"
    done
}
