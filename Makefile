# portrait gateway: `make run` serves the gateway on the embedded backend, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# GATEWAY_BIND wins over HOST and PORT when it is set.
GATEWAY_BIND ?= $(HOST):$(PORT)
FLASK := $(BIN)/flask --app app

.PHONY: venv run test test-fast test-unit lint format clean export index check-models deploy-files

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-gateway.txt requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

# The whole suite (what CI runs): tests/unit, tests/contract, tests/system, in that order.
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The loop while working: unit and contract tiers (no real programs, no extra virtualenv, no download).
test-fast: venv
	$(BIN)/python -m pytest tests/unit tests/contract $(PYTEST_ARGS)

# Seconds: no TensorFlow, no subprocess.
test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# ruff, and the import layers of pyproject.toml ([tool.importlinter]).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis test-artifacts

# The gateway on the embedded backend, in the foreground; Ctrl-C stops it.
run: venv
	$(FLASK) export-models --if-missing
	GATEWAY_BIND=$(GATEWAY_BIND) $(BIN)/gunicorn --config gunicorn.conf.py 'app:create_app()'

# Write the demo servables into serving_models/ (those already there are kept).
export: venv
	$(FLASK) export-models --if-missing

# Index a folder of photos as a new gallery version: make index DIR=path/to/photos [INDEX_ARGS=--all-faces]
index: venv
	@test -n "$(DIR)" || { echo "usage: make index DIR=path/to/photos [INDEX_ARGS=--all-faces]"; exit 2; }
	$(FLASK) build-index $(INDEX_ARGS) "$(DIR)"

# Check every servable against pipeline.toml; exits 1 on a misfit (CHECK_ARGS=--json for CI).
check-models: venv
	$(FLASK) check-models $(CHECK_ARGS)

# Rewrite the copies of serving_models.config, pipeline.toml and deploy/'s files that the kustomizations
# (deploy/k8s, deploy/kserve, deploy/seldon) generate their ConfigMaps from; the tests fail until they match.
deploy-files: venv
	$(BIN)/python scripts/sync_deploy_files.py
