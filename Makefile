# portrait gateway: `make run` serves the gateway on the embedded backend, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# GATEWAY_BIND wins over HOST and PORT when it is set.
GATEWAY_BIND ?= $(HOST):$(PORT)
FLASK := $(BIN)/flask --app app

.PHONY: venv run test lint format clean export index check-models compose-smoke

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-gateway.txt requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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

# docker-compose.yaml built and run for real on a private Docker engine, checked, then removed (as root, with
# Debian's docker.io and debootstrap; no registry or GPU needed): scripts/compose_smoke.py, docs/deployment.md.
compose-smoke: venv
	$(BIN)/python -m scripts.compose_smoke $(SMOKE_ARGS)
