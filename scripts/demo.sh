#!/usr/bin/env bash
# Fresh machine -> the whole mission end to end on a synthetic cohort in ./demo-store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/histstore --store "${HISTSTORE_STORE:-demo-store}" demo "$@"
