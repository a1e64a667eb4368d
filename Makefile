# portrait gateway: `make run` serves the gateway on the embedded backend, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# GATEWAY_BIND wins over HOST and PORT when it is set.
GATEWAY_BIND ?= $(HOST):$(PORT)
# The model server's ports (make model-server), and the config it reads: serving_models.config with real paths.
SERVING_PORT ?= 8500
SERVING_REST_PORT ?= 8501
MODEL_SERVER_CONFIG := serving_models.model-server.config
FLASK := $(BIN)/flask --app app

.PHONY: venv run model-server run-grpc test test-fast test-unit lint format clean export index check-models deploy-files compose-smoke

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-gateway.txt requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

# Test files run in TEST_WORKERS processes (pytest-xdist; a file's tests stay in one, so its fixtures are built
# once). More workers than cores: many tests wait on a program, a socket or a deadline. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
WORKERS := -n $(TEST_WORKERS) --dist loadfile

# The whole suite (what CI runs): tests/unit, tests/contract, tests/system.
test: venv
	$(BIN)/python -m pytest $(WORKERS) $(PYTEST_ARGS)

# The loop while working: unit and contract tiers (no real programs, no extra virtualenv, no download).
test-fast: venv
	$(BIN)/python -m pytest $(WORKERS) tests/unit tests/contract $(PYTEST_ARGS)

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

# TF Serving without Docker (docs/model-server.md): the demo servables behind TF Serving's gRPC and REST APIs, with
# the flags compose gives TF Serving (bar the GPU and batching ones). Ctrl-C drains the calls in flight and stops.
model-server: venv
	$(FLASK) export-models --if-missing
	sed 's#"/models/#"$(CURDIR)/serving_models/#' serving_models.config > $(MODEL_SERVER_CONFIG).tmp
	mv $(MODEL_SERVER_CONFIG).tmp $(MODEL_SERVER_CONFIG)
	$(BIN)/python -m app.model_server --port=$(SERVING_PORT) --rest_api_port=$(SERVING_REST_PORT) \
		--model_config_file=$(MODEL_SERVER_CONFIG) --model_config_file_poll_wait_seconds=60 \
		--file_system_poll_wait_seconds=5 --allow_version_labels_for_unavailable_models=true \
		--monitoring_config_file=deploy/monitoring.config --enable_model_warmup=true

# The gateway as docker-compose runs it: a gRPC client of the model server (`make model-server` in another terminal).
run-grpc: venv
	GATEWAY_BACKEND=grpc GATEWAY_SERVING_TARGET=localhost:$(SERVING_PORT) GATEWAY_BIND=$(GATEWAY_BIND) \
		$(BIN)/gunicorn --config gunicorn.conf.py 'app:create_app()'

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

# docker-compose.yaml built and run for real on a private Docker engine, checked, then removed (as root, with
# Debian's docker.io and debootstrap; no registry or GPU needed): scripts/compose_smoke.py, docs/deployment.md.
compose-smoke: venv
	$(BIN)/python -m scripts.compose_smoke $(SMOKE_ARGS)
