#!/usr/bin/env bash
# Fresh machine -> green test suite: set up .venv, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=25 "$@"
