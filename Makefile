# The two commands a new user needs: `make demo` and `make test`. Both install what is missing.
PYTHON ?= python3
export ARCHITECT_NIGHTLY_TZ ?= UTC
PREFECT_ENV = PREFECT_API_URL=http://127.0.0.1:4200/api PREFECT_HOME=$(CURDIR)/.sandbox/prefect

.PHONY: demo test lint install sandbox-up sandbox-down sandbox-status sandbox-purge deployments

## demo: install, bring the sandbox up, deploy the reference app end to end, say where to look
demo: install sandbox-up deployments
	$(PREFECT_ENV) $(PYTHON) -m sandbox.demo

## test: install, bring the sandbox up, run the whole test suite
test: install sandbox-up
	$(PREFECT_ENV) $(PYTHON) -m pytest

## lint: ruff's checks and formatting, and mypy on the core and the runner (CI runs it before the tests)
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

## install: the Debian packages of system-packages.txt, then the Python ones of pyproject.toml
install:
	@$(PYTHON) -m deployments.system_packages install
	@# pip checks every requirement itself, and installs nothing when all are met (a few seconds).
	@$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

sandbox-up:
	$(PYTHON) -m sandbox up

sandbox-down:
	$(PYTHON) -m sandbox down

sandbox-status:
	$(PYTHON) -m sandbox status

sandbox-purge:
	$(PYTHON) -m sandbox down --purge

## deployments: register the manual and nightly deployments on the sandbox's Prefect server
deployments:
	$(PREFECT_ENV) prefect --no-prompt deploy --all
