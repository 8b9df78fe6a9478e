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

# require_finished DIR: the training run an evaluation loads is finished (its log ends with a
# result; a model with nothing to learn, such as zero-shot CLIP, leaves no checkpoint).
require_finished() {
    [ "$DRY_RUN" = 1 ] && return 0
    is_finished "$1" || die "the training run $1 is not finished (no result in its log): run its training first"
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

# run_plan PROTOCOL TRAINER CONFIG "SHOTS" DATASET...: every run of the protocol (for xd the
# DATASETS are the targets), in order, each through run_in. The runs come from tools/protocols.py
# (`plan`), the grid python -m tools.sweep runs too; it checks every dataset and trainer config
# before printing anything. Each line it prints is one run as shell words quoted by Python's
# shlex.join (run directory, the training run it evaluates or '', train.py's arguments), so
# `eval` only splits them back into words.
run_plan() {
    local protocol=$1 trainer=$2 config=$3 shots=$4 plan line
    local -a run
    shift 4
    # shellcheck disable=SC2086 # SEEDS and shots are lists of words
    plan=$("$PYTHON" -m tools.protocols plan "$protocol" "$trainer" "$config" --data "$DATA" \
        --output "$OUTPUT" --seeds $SEEDS --shots $shots --datasets "$@") || exit 1
    # fd 3, so that train.py's stdin stays the script's
    while IFS= read -r -u 3 line; do
        [ -n "$line" ] || continue
        eval "run=($line)"
        [ -z "${run[1]}" ] || require_finished "${run[1]}"
        run_in "${run[0]}" "$PYTHON" train.py "${run[@]:2}"
    done 3<<<"$plan"
}
