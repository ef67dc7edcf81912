# Switchboard: `make run` starts a whole gateway, `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `make run PORT=8081` serves on another port.
PORT   ?= 8080
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test lint lint-check bench bench-peers bench-batch lock redis-server chromium clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The tests start their own private redis-server; make sure the binary exists.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (sudo apt-get install redis-server, or brew install redis)"; exit 1; \
	  fi; }

# The console's tests drive the distribution's headless Chromium (no browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$SB_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; \
	  else \
	    echo "chromium is missing: install it (sudo apt-get install chromium), or set SB_CHROMIUM"; exit 1; \
	  fi; }

run: install
	@command -v redis-server >/dev/null 2>&1 || [ -n "$$REDIS_URL" ] || $(MAKE) --no-print-directory redis-server
	$(BIN)/switchboard dev --port $(PORT)

test: install redis-server chromium lint-check
	$(BIN)/pytest -q

# Style and types are part of the suite: CI runs them too.
lint-check: install
	$(BIN)/ruff check .
	$(BIN)/mypy schemas ingress workers

lint: lint-check

bench: install redis-server
	$(BIN)/python bench/overhead.py

# Install the peers measured with `bench/overhead.py --peers` (LiteLLM proxy, Portkey's
# gateway) into bench/.peers/, which git ignores; again it changes nothing.
bench-peers: install
	$(BIN)/python bench/peers.py install

# A 50,000-line batch drained at the provider's rpm beside an interactive load
# (docs/benchmarks.md); `make bench-batch ARGS=--quick` for a short run, and
# `make bench-batch ARGS="--lanes --interactive-share 0.22 --duration 240"` for the
# configuration whose figures docs/benchmarks.md records last.
bench-batch: install redis-server
	$(BIN)/python bench/batch_drain.py $(ARGS)

# Refresh the lock file from pyproject.toml (run after changing dependencies).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet --upgrade pip
	.lockenv/bin/python -m pip install --quiet -e '.[dev]'
	.lockenv/bin/python -m pip freeze --exclude-editable | grep -v '^switchboard' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .switchboard .pytest_cache
