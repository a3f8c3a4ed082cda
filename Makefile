# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both build the virtual environment from nothing when it is missing or pyproject.toml changed.
PY ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow clean-venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recsys demo $(ARGS)

# The suite CI runs; the long reliability runs are `make test-slow`.
test: $(STAMP)
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest -m "not slow" $(ARGS)

test-slow: $(STAMP)
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest -m slow $(ARGS)

clean-venv:
	rm -rf $(VENV)
