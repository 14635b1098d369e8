# `make demo` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := chromium postgresql

.PHONY: demo test lint install system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need (browser, database server); installed only when run as root and missing.
system-deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (run 'sudo apt-get install$$missing'); browser/database tests will fail"; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check k3eval human_eval benchmarks tests

demo: $(STAMP)
	$(VENV)/bin/k3eval demo

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs reports/demo .pytest_cache
