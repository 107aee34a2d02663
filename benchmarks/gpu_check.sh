#!/usr/bin/env bash
# The GPU check (issue 14; what it measures: benchmarks/bench_gpu.py). On one GPU, in under
# 8 minutes: embed with AMP, 200 AdCo steps of resnet50-layer3 at batch 256, the MIL benchmark
# with bags on the device, and `histstore pretrain --nproc-per-node 1` (NCCL); one table.
#
#   bash benchmarks/gpu_check.sh           # records the figures (benchmarks/README.md convention)
#   bash benchmarks/gpu_check.sh --smoke   # tiny CPU run: proves the check works, records nothing
#
# PYTHON selects the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
if [ "${1:-}" = "--smoke" ]; then
    exec "$PY" -m benchmarks.bench_gpu --smoke
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; run with --smoke for the CPU check" >&2
    exit 2
fi
if "$PY" -c "import benchmarks.registry" 2>/dev/null; then
    # the results convention: run_all writes this benchmark's section of benchmarks/results.json
    exec timeout 480 "$PY" -m benchmarks.run_all --only gpu
fi
exec timeout 480 "$PY" -m benchmarks.bench_gpu
