#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv and install embedflow into it
# (editable, with the test extra). Re-running is cheap: nothing is reinstalled unless
# pyproject.toml or constraints.txt changed since the last successful install.
# EMBEDFLOW_TORCH_INDEX=https://download.pytorch.org/whl/cpu takes torch from that index (a
# CPU-only build: no CUDA libraries in the venv); the pins in constraints.txt still hold.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EMBEDFLOW_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.embedflow-installed"
TORCH_INDEX=${EMBEDFLOW_TORCH_INDEX:-}
index=()
[ -z "$TORCH_INDEX" ] || index=(--extra-index-url "$TORCH_INDEX")
want=$( (cat pyproject.toml constraints.txt; echo "$TORCH_INDEX") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing embedflow and its dependencies into $VENV (first run takes a few minutes)" >&2
  # pip's output goes to a log, shown only if the install fails
  log="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip && "$VENV/bin/python" -m pip install -q ${index[@]+"${index[@]}"} -c constraints.txt -e ".[test,ray,milvus,serve,onnx,remote]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: installing failed (log above, also in $log)" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi
