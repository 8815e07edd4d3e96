# The commands the README names. `make test` and `make demo` work on a fresh machine:
# they create .venv, install the package with its dev extra, and install beanstalkd from
# Debian's packages when it is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit reliability demo bench beanstalkd clean

test: $(STAMP) beanstalkd lint typecheck
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy reads the package under its installed name through a tree of links (see pyproject).
typecheck: $(STAMP)
	@rm -rf .typecheck && mkdir -p .typecheck/tubeworker
	@for f in worker/*; do ln -s "../../$$f" .typecheck/tubeworker/; done
	@ln -s ../../handlers .typecheck/tubeworker/handlers
	$(BIN)/mypy

# Fast: no server needed.
unit: $(STAMP)
	$(BIN)/pytest tests/unit

# The reliability suite's long run (a short run is part of `make test`).
reliability: $(STAMP) beanstalkd
	TUBEWORKER_RELIABILITY=long $(BIN)/pytest tests/reliability -p no:cacheprovider

demo: $(STAMP) beanstalkd
	$(BIN)/tubeworker demo

# Not part of `make test`: speed lives in the benchmark, never in timed tests.
bench: $(STAMP) beanstalkd
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m tests.bench --scenario client
	$(BIN)/python -m tests.bench --scenario overhead
	$(BIN)/python -m tests.bench --scenario io
	$(BIN)/python -m tests.bench --scenario outage
	$(BIN)/python -m tests.bench --scenario limits

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's packages the tests need, only those missing (root, or passwordless sudo). Each
# entry is COMMAND=PACKAGE: the package is installed when the command is not found.
#   beanstalkd       every server test
#   supervisord      tests/e2e/test_deploy.py runs deploy/supervisor for real
#   systemd-analyze  tests/e2e/test_deploy.py verifies deploy/systemd (systemd need not run)
#   tmux             the terminal test of `tubeworker top`
#   promtool         tests/e2e/test_deploy_prometheus.py checks and tests deploy/prometheus
#   chromium, chromedriver  tests/browser/: the dashboard in a headless browser (Selenium)
SYSTEM_PACKAGES := \
	beanstalkd=beanstalkd \
	promtool=prometheus \
	supervisord=supervisor \
	systemd-analyze=systemd \
	tmux=tmux \
	chromium=chromium \
	chromedriver=chromium-driver

beanstalkd:
	@missing=; \
	for entry in $(SYSTEM_PACKAGES); do \
		cmd=$${entry%%=*}; pkg=$${entry#*=}; \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "missing:$$missing, and this is not a Debian-like system: install them with your package manager, then run make again." >&2; exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "missing:$$missing: run 'sudo apt-get install -y$$missing', then make again." >&2; exit 1; fi; \
	echo "installing$$missing from Debian's packages"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	for entry in $(SYSTEM_PACKAGES); do \
		cmd=$${entry%%=*}; pkg=$${entry#*=}; \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || { echo "apt-get did not install $$pkg ($$cmd)" >&2; exit 1; }; \
	done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info
