# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both build the virtual environment from nothing when it is missing or pyproject.toml changed,
# with the test, developer-tool (matplotlib, optuna), lint and spark (pyspark: the spark engine's test)
# extras; the image installs `.` alone.
PY ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-slow clean-venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,tools,dev,spark]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recsys demo $(ARGS)

# ruff (lint + format check) and mypy, configured in pyproject.toml; also a pre-commit hook.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite CI runs (lint first); the long reliability runs are `make test-slow`. Two pytest-xdist
# workers, a whole test file each (its module fixtures, its broker's topics): many integration tests
# wait on Kafka and on worker processes, so two run side by side on the 2 cores. TEST_WORKERS=0 runs
# it in one process. The slowest tests are listed at the end (the suite must stay well under 15 min).
TEST_WORKERS ?= 2
test: $(STAMP) lint
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=25 $(ARGS)

test-slow: $(STAMP)
	bash scripts/system-deps.sh
	$(VENV)/bin/python -m pytest -m slow $(ARGS)

clean-venv:
	rm -rf $(VENV)
