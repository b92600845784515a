# avgate — `make help` lists the targets. On a fresh machine `make run` and
# `make test` install everything they need (Python packages from the lock
# files into .venv, buf/helm/grpcurl into .tools/bin, generated proto code).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools/bin
PROTOS := $(shell find protos/avgate -name '*.proto')
STAMP_DEPS := $(VENV)/.installed
STAMP_PROTO := avgate/.proto-generated
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP_DEPS): requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements-dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

$(TOOLS)/buf $(TOOLS)/helm $(TOOLS)/grpcurl: scripts/install-tools.sh
	scripts/install-tools.sh
	touch $(TOOLS)/buf $(TOOLS)/helm $(TOOLS)/grpcurl

$(STAMP_PROTO): $(STAMP_DEPS) $(PROTOS) scripts/gen_protos.py
	$(BIN)/python scripts/gen_protos.py
	touch $@

.PHONY: install
install: $(STAMP_DEPS) $(STAMP_PROTO) $(TOOLS)/buf $(TOOLS)/helm $(TOOLS)/grpcurl ## Install packages and tools, generate proto code

.PHONY: proto
proto: $(STAMP_DEPS) ## Generate Python code from protos/ (never edit the output)
	$(BIN)/python scripts/gen_protos.py
	touch $(STAMP_PROTO)

.PHONY: docs
docs: install ## Regenerate docs/configuration.md (settings classes) and docs/authorization.md (protos)
	$(BIN)/python scripts/gen_config_docs.py
	$(BIN)/python scripts/gen_access_doc.py

.PHONY: run
run: install ## Run the whole local stack (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/avgate run

.PHONY: test
test: install ## Run the whole test suite (TEST_DATABASE_URL/DATABASE_URL, else embedded PostgreSQL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: test-db
test-db: install ## Run only the database-backed tests (CI runs them again on PostgreSQL 15)
	$(BIN)/python -m pytest -m "db and not bench" $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff, mypy, import contracts (no cycles), code shape (no private imports, no oversized modules), buf lint, helm lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_code_shape.py
	cd protos && ../$(TOOLS)/buf lint
	$(TOOLS)/helm lint --strict helm/avgate

.PHONY: format
format: install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: check
check: lint test ## Exactly what CI runs

# Sizes, for example BENCH_LEDGER_ARGS="--entries 5000" (docs/BENCHMARKS.md names the ones its figures used).
BENCH_LEDGER_ARGS ?=
BENCH_DISPATCHER_ARGS ?=
# Every benchmark on the same server: TEST_DATABASE_URL, else DATABASE_URL (as the test fixtures pick), else embedded.
BENCH_DB = DATABASE_URL="$${TEST_DATABASE_URL:-$$DATABASE_URL}"

.PHONY: bench
bench: install ## Run every benchmark (side by side; GOAL | FIGURE | MET/MISSED lines; figures go to docs/BENCHMARKS.md)
	$(BENCH_DB) $(BIN)/avgate bench ledger $(BENCH_LEDGER_ARGS)
	$(BENCH_DB) $(BIN)/avgate bench dispatcher $(BENCH_DISPATCHER_ARGS)
	$(BENCH_DB) $(BIN)/python -m pytest -m bench tests/bench -s

.PHONY: clean
clean: ## Remove generated code, tools and the virtual environment (keeps .avgate state)
	rm -rf $(VENV) .tools $(STAMP_PROTO) .mypy_cache .ruff_cache .pytest_cache
	find avgate -path '*/v1/*_pb2*' -delete
