# The two commands a newcomer needs. Both create or refresh .venv first (scripts/bootstrap.sh).
#   make run    the main job: the YAML pipeline pipelines/text_embedding.yaml on bundled data
#   make test   run the whole test suite (what CI runs)
# and one more example:
#   make demo   embed the bundled sentences and photos in Python, print nearest neighbours
PY := .venv/bin/python

.PHONY: run demo test venv

venv:
	@bash scripts/bootstrap.sh

run: venv
	.venv/bin/embedflow run pipelines/text_embedding.yaml

demo: venv
	$(PY) examples/quickstart.py

test: venv
	$(PY) -m pytest
