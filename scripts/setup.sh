#!/usr/bin/env bash
# Create (or reuse) .venv and install histstore with its test extras. Needs only python3 + pip;
# npm (Node.js) installs the slide viewer's JavaScript (OpenSeadragon, pinned in package.json)
# into node_modules/ for `histstore serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test]"
if command -v npm >/dev/null 2>&1; then
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
else
    echo "note: npm not found: \`histstore serve\` needs OpenSeadragon; install Node.js and npm, then run: npm ci" >&2
fi
