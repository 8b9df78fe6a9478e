# The two commands README puts first. Each sets up what it needs (scripts/setup_env.sh): the
# current Python when it already has every requirement, else a .venv made and filled here.
#   make test   lint (ruff) and the test suite: what CI runs (.ci/run calls it)
#   make demo   the demo world's base-to-new table (scripts/demo.sh)
# Variables: PYTHON, DASSL_SOURCE, NO_DASSL=1 (see scripts/setup_env.sh and README "Set-up").
SHELL := bash
.PHONY: test demo

test:
	@PY=$$(DEV=1 bash scripts/setup_env.sh) && \
	echo "[test] ruff check ." && "$$PY" -m ruff check . && \
	echo "[test] ruff format --check ." && "$$PY" -m ruff format --check . && \
	echo "[test] python -m pytest -rs -n auto tests" && "$$PY" -m pytest -rs -n auto tests

demo:
	@PY=$$(bash scripts/setup_env.sh) && PYTHON="$$PY" bash scripts/demo.sh
