# portrait gateway: `make run` serves the gateway on the embedded backend, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv run test lint format clean

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

run: venv
	$(BIN)/flask --app app export-models --if-missing
	GATEWAY_BIND=$(HOST):$(PORT) $(BIN)/gunicorn --config gunicorn.conf.py 'app:create_app()'
