#!/usr/bin/env bash
# Find or make a Python that has everything this repository needs, and print its path on
# stdout (progress and errors go to stderr). `make test` and `make demo` call it first.
#
#   1. $PYTHON (default python3) when it already has every requirement: nothing is installed;
#   2. else .venv/bin/python when .venv already has them;
#   3. else create .venv from $PYTHON and install requirements.txt (with DEV=1 also
#      requirements-dev.txt) and Dassl into it.
#
# env: PYTHON (python3); DEV=1 (lint and test tools too); NO_DASSL=1 (neither require nor
#      install Dassl: the tests that need it are then skipped, the trainers cannot run);
#      DASSL_SOURCE (what pip installs Dassl from; default: its upstream git repository at
#      commit c61a1b5; offline: a local clone, a wheel, or e.g. "dassl==0.6.3" with
#      PIP_INDEX_URL / PIP_FIND_LINKS pointing at your mirror). pip's own variables
#      (PIP_INDEX_URL, PIP_FIND_LINKS, ...) apply to every install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DASSL_SOURCE=${DASSL_SOURCE:-git+https://github.com/KaiyangZhou/Dassl.pytorch@c61a1b570ac6333bd50fb5ae06aea59002fb20bb}
VENV=.venv
check_args=()
[ "${DEV:-0}" = 1 ] && check_args+=(--dev)
[ "${NO_DASSL:-0}" = 1 ] && check_args+=(--no-dassl)

say() { echo "[setup] $*" >&2; }

# has_everything PY: PY runs and scripts/check_env.py finds nothing missing (quietly).
has_everything() {
    "$1" scripts/check_env.py "${check_args[@]}" >/dev/null 2>&1
}

# fail STEP HINT: the step that failed and what to try, then exit.
fail() {
    say "FAILED at step $1. $2"
    exit 1
}

if command -v "$PYTHON" >/dev/null 2>&1 && has_everything "$PYTHON"; then
    say "using $("$PYTHON" -c 'import sys; print(sys.executable)') (it has every requirement; nothing to install)"
    "$PYTHON" -c 'import sys; print(sys.executable)'
    exit 0
fi
if [ -x "$VENV/bin/python" ] && has_everything "$VENV/bin/python"; then
    say "using $VENV/bin/python (it has every requirement; nothing to install)"
    echo "$PWD/$VENV/bin/python"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || fail "0/4" "No '$PYTHON' on PATH: set PYTHON to a Python 3.10 or 3.11."
say "$PYTHON lacks some requirements; setting up $PWD/$VENV (missing: $("$PYTHON" scripts/check_env.py "${check_args[@]}" | cut -d: -f1 | paste -sd, -))"
if [ ! -x "$VENV/bin/python" ]; then
    say "step 1/4: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV" >&2 || fail "1/4 (python -m venv $VENV)" \
        "Install your Python's venv module (Debian/Ubuntu: apt install python3-venv), or set PYTHON to another Python."
else
    say "step 1/4: $VENV exists; completing it"
fi
PY=$PWD/$VENV/bin/python
files=(-r requirements.txt)
[ "${DEV:-0}" = 1 ] && files+=(-r requirements-dev.txt)
say "step 2/4: pip install ${files[*]} (torch is large: this can take several minutes)"
"$PY" -m pip install "${files[@]}" >&2 || fail "2/4 (pip install ${files[*]})" \
    "See pip's message above. Offline: point PIP_INDEX_URL or PIP_FIND_LINKS at a mirror or a wheel folder."
if [ "${NO_DASSL:-0}" = 1 ]; then
    say "step 3/4: Dassl skipped (NO_DASSL=1)"
else
    say "step 3/4: pip install --no-build-isolation $DASSL_SOURCE"
    "$PY" -m pip install --no-build-isolation "$DASSL_SOURCE" >&2 || fail "3/4 (Dassl from $DASSL_SOURCE)" \
        "No network? Set DASSL_SOURCE to a local clone of KaiyangZhou/Dassl.pytorch, a wheel, or a requirement your index serves (README, Set-up)."
fi
say "step 4/4: checking $VENV"
if ! "$PY" scripts/check_env.py "${check_args[@]}" >&2; then
    fail "4/4 (check)" "$VENV still lacks the requirements listed above: install them into $VENV by hand (README, Set-up)."
fi
say "ready: $PY"
echo "$PY"
