#!/usr/bin/env bash
# Fresh machine -> green test suite: set up .venv, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# one test process per core, at most 4 (each runs torch on one thread: tests/conftest.py); a
# file's tests stay in one process, so module fixtures (Dask clusters, trained stores) are built once
exec .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=25 "$@"
