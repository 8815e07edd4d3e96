# The commands the README names. `make test` and `make demo` work on a fresh machine:
# they create .venv and install the package in it (the demo: tubeworker and what it needs
# to run; the tests: with its dev extra too), and install from Debian's packages what is
# missing (the demo: beanstalkd only; the tests: everything their real parts need).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
# Quiet: setuptools warns about every editable install (a note for its own developers).
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: test lint typecheck unit reliability demo bench beanstalkd system-packages install-missing clean

test: $(STAMP) system-packages lint typecheck
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
reliability: $(STAMP) system-packages
	TUBEWORKER_RELIABILITY=long $(BIN)/pytest tests/reliability -p no:cacheprovider

# Only beanstalkd and tubeworker's runtime dependencies: no root needed when beanstalkd is
# already on PATH.
demo: $(RUNTIME) beanstalkd
	$(BIN)/tubeworker demo

# Not part of `make test`: speed lives in the benchmark, never in timed tests.
bench: $(STAMP) beanstalkd
	@$(MAKE) --no-print-directory install-missing PACKAGES="valgrind=valgrind"
	$(PIP) install -e '.[dev,bench]'
	$(BIN)/python -m tests.bench.instructions --guard
	$(BIN)/python -m tests.bench --scenario client
	$(BIN)/python -m tests.bench --scenario overhead
	$(BIN)/python -m tests.bench --scenario overhead --concurrency-list 1000,10000 --daemon-systems tubeworker,aiostalk
	$(BIN)/python -m tests.bench --scenario io
	$(BIN)/python -m tests.bench --scenario floor
	$(BIN)/python -m tests.bench --scenario memory --memory-jobs-list 1000,10000 --memory-seconds 10
	$(BIN)/python -m tests.bench.latency
	$(BIN)/python -m tests.bench --scenario outage
	$(BIN)/python -m tests.bench --scenario limits

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

# Debian's packages, only those missing (root, or passwordless sudo). Each entry is
# COMMAND=PACKAGE: the package is installed when the command is not found. `beanstalkd`
# installs the first (the demo's), `system-packages` all of them (the tests').
#   beanstalkd       every server test
#   supervisord      tests/e2e/test_deploy.py runs deploy/supervisor for real
#   systemd-analyze  tests/e2e/test_deploy.py verifies deploy/systemd (systemd need not run)
#   tmux             the terminal test of `tubeworker top`
#   promtool         tests/e2e/test_deploy_prometheus.py checks and tests deploy/prometheus
#   chromium, chromedriver  tests/browser/: the dashboard in a headless browser (Selenium)
#   php              tests/e2e/test_signed_jobs.py: a PHP app signs and puts a job
#   stunnel4         tests/e2e/test_tls.py: TLS (mutual) in front of beanstalkd
SYSTEM_PACKAGES := \
	beanstalkd=beanstalkd \
	promtool=prometheus \
	supervisord=supervisor \
	systemd-analyze=systemd \
	tmux=tmux \
	chromium=chromium \
	chromedriver=chromium-driver \
	php=php-cli \
	stunnel4=stunnel4

beanstalkd:
	@$(MAKE) --no-print-directory install-missing PACKAGES="$(firstword $(SYSTEM_PACKAGES))"

system-packages:
	@$(MAKE) --no-print-directory install-missing PACKAGES="$(SYSTEM_PACKAGES)"

install-missing:
	@missing=; \
	for entry in $(PACKAGES); do \
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
	for entry in $(PACKAGES); do \
		cmd=$${entry%%=*}; pkg=$${entry#*=}; \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || { echo "apt-get did not install $$pkg ($$cmd)" >&2; exit 1; }; \
	done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis *.egg-info
