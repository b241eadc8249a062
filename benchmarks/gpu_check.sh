#!/usr/bin/env bash
# The GPU check (issue 15): one table — MiniLM over 50,000 sentences and resnet50 over 5,000 JPEGs,
# embedflow vs sentence-transformers fp16 / a 16-worker DataLoader / the forward-only ceilings,
# with GPU memory peaks — appended to benchmarks/RESULTS.md. Installs nothing, needs no network;
# run it from the repository root after `make test` (or scripts/bootstrap.sh) made .venv. On a
# bare GPU machine without embedflow or network, scripts/gpu_bundle.sh prepares what to carry
# and says how to run it there (PYTHON=python3, --minilm-config for MiniLM with random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
