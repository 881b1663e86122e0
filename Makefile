# Feature Votes. `make run` serves on the in-memory store; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run run-cluster test screenshots lint audit bench bench-quick bench-tools fmt clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/activate
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/activate
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(PY) -m service

# Two instances (8081, 8082) on one Redis behind nginx on 8080 (config/nginx.conf); Ctrl-C
# stops all three, and so does any one of them exiting. FV_STORE and FV_SECRET are honoured.
CLUSTER_STORE ?= redis://127.0.0.1:6379/0
run-cluster: $(VENV)/.runtime
	@command -v nginx >/dev/null || { echo "run-cluster: nginx is not installed" \
		"(Debian/Ubuntu: apt-get install -y nginx)" >&2; exit 1; }
	@set -u; \
	export FV_STORE="$${FV_STORE:-$(CLUSTER_STORE)}"; \
	export FV_SECRET="$${FV_SECRET:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(32))')}"; \
	export FV_TRUSTED_PROXIES="$${FV_TRUSTED_PROXIES:-127.0.0.1}"; \
	$(PY) -c 'import redis, sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()' \
		"$$FV_STORE" 2>/dev/null || { echo "run-cluster: no Redis at $$FV_STORE" \
		"(start redis-server, or set FV_STORE)" >&2; exit 1; }; \
	rundir=$$(mktemp -d); pids=""; \
	trap 'kill $$pids 2>/dev/null; wait; rm -rf "$$rundir"' EXIT; trap 'exit 0' INT TERM; \
	PORT=8081 $(PY) -m service & pids="$$pids $$!"; \
	PORT=8082 $(PY) -m service & pids="$$pids $$!"; \
	nginx -p "$$rundir" -e stderr -c "$(CURDIR)/config/nginx.conf" -g 'daemon off;' & \
	pids="$$pids $$!"; \
	echo "run-cluster: http://localhost:8080 (nginx) -> :8081, :8082 on $$FV_STORE"; \
	echo "run-cluster: admin token: $$($(PY) -m service token --admin)"; \
	while :; do for pid in $$pids; do kill -0 $$pid 2>/dev/null \
		|| { echo "run-cluster: process $$pid exited; stopping the others" >&2; exit 1; }; \
		done; sleep 1; done

test: $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS)

# The README's docs/img/*.png from a seeded board in Debian's Chromium (tests/screenshots.py);
# `make test` only checks that this works, into a temporary directory.
screenshots: $(VENV)/.dev
	$(PY) -m tests.screenshots

# pip-audit needs PyPI's vulnerability API (pypi.org/pypi/<name>/<version>/json); where that is
# unreachable (a registry mirror only) lint says so loudly and `make audit` fails instead.
AUDIT_PROBE := https://pypi.org/pypi/aiohttp/3.14.5/json
lint: $(VENV)/.dev
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy
	@if $(PY) -c 'import urllib.request as u; u.urlopen("$(AUDIT_PROBE)", timeout=5)' \
		2>/dev/null; then $(MAKE) --no-print-directory audit; else echo "lint: pip-audit NOT RUN:" \
		"no route to PyPI's vulnerability API from here; run 'make audit' where there is one" >&2; fi

# Benchmarks (bench/README in bench/RESULTS.md): fan-out against a floor and two peers with a Node
# `ws` client fleet, REST against a trivial aiohttp handler and a FastAPI + uvicorn vote peer with
# wrk, the cluster over Redis, board size, boards (10,000 of them, sockets on other boards, memory
# per board), the durable store (votes/s on SQLite ÷ memory, the load at start). Every request
# goes through aiohttp (no vote lane).
# Each writes bench/results/<name>.md/.json; report.py assembles bench/RESULTS.md and fanout.py
# draws bench/fanout.png. Run it on a quiet machine (~1 h); `make bench-quick` is a smoke run.
BENCHES := fanout rest cluster boardsize boards durable
$(VENV)/.bench: requirements.txt bench/requirements.txt | $(BIN)/activate
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

bench/node_modules/.package-lock.json: bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund

bench-tools: $(VENV)/.bench bench/node_modules/.package-lock.json
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
		|| { echo "bench: wrk is missing (Debian/Ubuntu: apt-get install -y wrk)" >&2; exit 1; }
	@command -v redis-server >/dev/null || { echo "bench: redis-server is missing" >&2; exit 1; }

bench: bench-tools
	for b in $(BENCHES); do $(PY) bench/$$b.py $(BENCH_ARGS) || exit 1; done
	$(PY) bench/report.py

bench-quick: bench-tools
	for b in $(BENCHES); do $(PY) bench/$$b.py --quick $(BENCH_ARGS) || exit 1; done
	$(PY) bench/report.py --quick

# Known-vulnerability audit of the pinned runtime dependencies. --strict fails when a package
# cannot be checked (e.g. no route to an advisory database), so "no findings" is never silent.
PIP_AUDIT := pip-audit==2.10.1
audit: $(VENV)/.dev
	$(PY) -m pip install --quiet $(PIP_AUDIT)
	$(BIN)/pip-audit --strict --progress-spinner off -r requirements.txt

fmt: $(VENV)/.dev
	$(BIN)/ruff format service tests
	$(BIN)/ruff check --fix service tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
