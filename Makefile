# The two commands a newcomer needs. Both create or refresh .venv first (scripts/bootstrap.sh).
#   make demo   embed the bundled sample texts and photos, print shapes and nearest neighbours
#   make test   run the whole test suite (what CI runs)
PY := .venv/bin/python

.PHONY: demo test venv

venv:
	@bash scripts/bootstrap.sh

demo: venv
	$(PY) examples/quickstart.py

test: venv
	$(PY) -m pytest
