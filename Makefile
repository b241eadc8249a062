# The two commands a newcomer needs. Both create or refresh .venv first (scripts/bootstrap.sh).
#   make run    the main job: the YAML pipeline pipelines/text_embedding.yaml on bundled data
#   make test   lint (ruff, import-linter layer contracts, mypy on embedflow/) and the tests not marked slow;
#               with CI set (.ci/run sets it) every test, and the 20 slowest printed
#   make test-all  every test, as CI runs them
# and more:
#   make demo   embed the bundled sentences and photos in Python, print nearest neighbours
#   make lint   only the linters
PY := .venv/bin/python

.PHONY: run demo test test-all lint venv

venv:
	@bash scripts/bootstrap.sh

run: venv
	.venv/bin/embedflow run pipelines/text_embedding.yaml

demo: venv
	$(PY) examples/quickstart.py

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-cache
	.venv/bin/mypy

test: lint
	$(PY) -m pytest $(if $(CI),--durations=20,-m "not slow")

test-all: lint
	$(PY) -m pytest --durations=20
