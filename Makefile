# Two commands matter: `make run` and `make test`. See README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= conf/gateway.toml
PYTEST_ARGS ?=

# Debian packages the test suite drives, as "command:package". tests/e2e/test_browser.py
# drives Debian's Chromium through Playwright (never a browser Playwright downloads), and
# node/npm install its page's npm packages.
TEST_DEB := mosquitto_pub:mosquitto-clients mosquitto_sub:mosquitto-clients \
            chromium:chromium node:nodejs npm:npm
# The browser test's page and its pinned npm packages (MQTT.js, stomp.js).
BROWSER_DIR := tests/e2e/browser

.PHONY: run test lint fmt system-deps clean

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "gateway needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory _install-deb PKGS=python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.python-ok
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.python-ok
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/gateway run -c $(CONFIG)

# npm ci again only when node_modules is missing or older than package.json / the lock.
$(BROWSER_DIR)/node_modules/.installed: $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json | system-deps
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: $(VENV)/.installed-test system-deps $(BROWSER_DIR)/node_modules/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gateway

fmt: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Installs the Debian packages whose commands are missing (root), or says how.
system-deps:
	@missing=""; for pair in $(TEST_DEB); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$$(echo $$missing)" ]; then $(MAKE) --no-print-directory _install-deb PKGS="$$missing"; fi

_install-deb:
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages: $(PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKGS); \
	else \
	  echo "missing Debian packages; run: sudo apt-get install -y $(PKGS)"; exit 1; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info

# Broker comparison (docs/benchmarks.md): installs matplotlib and py-spy into .venv, the
# mosquitto Debian package when missing, amqtt and coilmq (a STOMP broker, for the STOMP
# comparison) into their own venvs, then compare + report.
# Quick look: make bench BENCH_ARGS="--reps 1 --seconds 2"
BENCH_ARGS  ?=
AMQTT_VENV  := bench/.venv-amqtt
COILMQ_VENV := bench/.venv-coilmq
COILMQ_REQ  := coilmq==1.1.0

.PHONY: bench bench-deps bench-coilmq

bench: bench-deps
	$(BIN)/python -m bench compare $(BENCH_ARGS)
	$(BIN)/python -m bench report

bench-deps: $(VENV)/.installed
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null && test -x $(BIN)/py-spy || \
	  $(BIN)/python -m pip install --quiet matplotlib py-spy
	@test -x /usr/sbin/mosquitto || $(MAKE) --no-print-directory _install-deb PKGS=mosquitto
	@test -x $(AMQTT_VENV)/bin/amqtt || { \
	  $(PYTHON) -m venv $(AMQTT_VENV) && \
	  $(AMQTT_VENV)/bin/python -m pip install --quiet --upgrade pip && \
	  $(AMQTT_VENV)/bin/python -m pip install --quiet amqtt; }
	@$(MAKE) --no-print-directory bench-coilmq

# coilmq alone: the bench harness test that drives it needs it (CI installs it).
bench-coilmq:
	@test -x $(COILMQ_VENV)/bin/coilmq || { \
	  $(PYTHON) -m venv $(COILMQ_VENV) && \
	  $(COILMQ_VENV)/bin/python -m pip install --quiet --upgrade pip && \
	  $(COILMQ_VENV)/bin/python -m pip install --quiet '$(COILMQ_REQ)'; }
