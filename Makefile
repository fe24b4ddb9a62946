# llamawool: the two commands are `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
## Debian's packages that tests need are installed only when missing; as root here, through
## sudo where make runs as another user (a hosted CI runner).
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo )env DEBIAN_FRONTEND=noninteractive apt-get
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
DEPLOY_STAMP := $(VENV)/.deploy-$(shell cat constraints.txt requirements/deploy.txt requirements/checkov.txt | cksum | cut -d' ' -f1)

.PHONY: serve test lint types unit install clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

.PHONY: deploy-deps manifests
## The offline validators tests/deploy uses (checkov in its own venv: requirements/checkov.txt).
$(DEPLOY_STAMP): $(STAMP) requirements/deploy.txt requirements/checkov.txt
	$(PIP) install --quiet -c constraints.txt -r requirements/deploy.txt
	@test -x $(VENV)/checkov/bin/python || $(PY) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet --disable-pip-version-check -r requirements/checkov.txt
	@rm -f $(VENV)/.deploy-*
	@touch $@

deploy-deps: $(DEPLOY_STAMP)

.PHONY: e2e-deps
E2E_STAMP := $(VENV)/.e2e-$(shell cat constraints.txt requirements/e2e.txt | cksum | cut -d' ' -f1)
## The browser tests' tools: Debian's chromium (installed only when missing) and Playwright.
$(E2E_STAMP): $(STAMP) requirements/e2e.txt
	$(PIP) install --quiet -c constraints.txt -r requirements/e2e.txt
	@rm -f $(VENV)/.e2e-*
	@touch $@

e2e-deps: $(E2E_STAMP)
	@command -v chromium >/dev/null 2>&1 || ($(APT_GET) update && $(APT_GET) install -y chromium)

## Render the production manifests into deploy/rendered/ (and compose's alert rules).
manifests: $(DEPLOY_STAMP)
	$(PY) deploy/render.py

## Start the server on embedded defaults (SQLite in ./data, in-process coordination).
serve: $(STAMP)
	$(PY) -m llamawool serve

## Lint, types and the whole test suite, against real servers the tests start.
test: $(STAMP) lint types bench-quick soak-quick unit

lint: $(STAMP)
	$(VENV)/bin/ruff check llamawool tests
	$(VENV)/bin/ruff format --check llamawool tests

types: $(STAMP)
	$(VENV)/bin/mypy llamawool

## The real servers the tests start themselves (Debian's packages, installed only when missing).
.PHONY: servers-deps
servers-deps:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || ($(APT_GET) update && $(APT_GET) install -y nginx-light)
	@command -v redis-server >/dev/null 2>&1 || ($(APT_GET) update && $(APT_GET) install -y redis-server)

## The image test's tools (tests/e2e/test_image.py): podman with runc (crun fails on some
## kernels' cgroup layouts) and debootstrap, which builds the local base image when no
## registry can be reached.
.PHONY: image-deps
image-deps:
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && { command -v debootstrap >/dev/null 2>&1 || test -x /usr/sbin/debootstrap || test -n "$$LLAMAWOOL_TEST_IMAGE_BASE"; } \
		|| ($(APT_GET) update && $(APT_GET) install -y podman runc debootstrap)


## Prometheus (promtool) and Alertmanager (amtool) from Debian's packages, installed only when missing:
## the alert rules' unit tests, `amtool check-config` and the cluster test that runs both servers.
.PHONY: monitoring-deps
monitoring-deps:
	@command -v promtool >/dev/null 2>&1 || ($(APT_GET) update && $(APT_GET) install -y --no-install-recommends prometheus)
	@command -v amtool >/dev/null 2>&1 || ($(APT_GET) update && $(APT_GET) install -y --no-install-recommends prometheus-alertmanager)

unit: $(STAMP) deploy-deps e2e-deps security-deps servers-deps image-deps monitoring-deps
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data

.PHONY: bench bench-quick bench-deps
BENCH_STAMP := $(VENV)/.bench-$(shell cat constraints.txt requirements/bench.txt | cksum | cut -d' ' -f1)
## The benchmarks' tools: profilers and psutil (requirements/bench.txt) and Debian's wrk (installed only when missing).
$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(PIP) install --quiet -c constraints.txt -r requirements/bench.txt
	@rm -f $(VENV)/.bench-*
	@touch $@

bench-deps: $(BENCH_STAMP)
	@command -v wrk >/dev/null 2>&1 || ($(APT_GET) update && $(APT_GET) install -y wrk)

## A smoke run of every benchmark (well under a minute): proves each runs; a missed goal does not fail it.
bench-quick: bench-deps servers-deps
	$(PY) -m benchmarks.tick --quick
	$(PY) -m benchmarks.boards --quick
	$(PY) -m benchmarks.ws --quick
	$(PY) -m benchmarks.actions --quick
	$(PY) -m benchmarks.startup --quick
	$(PY) -m benchmarks.autosave --quick
	$(PY) -m benchmarks.costs --quick
	$(PY) -m benchmarks.cluster --quick

## The soak (RELIABILITY.md): 2,000 players (REST + WebSocket) for 30 minutes on one process; fails on a
## growth trend over 5 % (RSS, open files, tasks, p99) or any error. soak-quick: 200 players for 60 s.
.PHONY: soak soak-quick
soak: bench-deps servers-deps
	$(PY) -m benchmarks.soak

soak-quick: bench-deps servers-deps
	$(PY) -m benchmarks.soak --quick

## The full benchmarks (about ten minutes; see BENCHMARKS.md); fails when a goal is missed.
bench: bench-deps servers-deps
	@status=0; for b in "tick" "boards" "ws --full" "actions" "startup" "autosave" "cluster"; do $(PY) -m benchmarks.$$b || status=1; done; exit $$status

.PHONY: security-deps fuzz
SECURITY_STAMP := $(VENV)/.security-$(shell cat constraints.txt requirements/security.txt | cksum | cut -d' ' -f1)
## The security tests' tools: schemathesis (requirements/security.txt).
$(SECURITY_STAMP): $(STAMP) requirements/security.txt
	$(PIP) install --quiet -c constraints.txt -r requirements/security.txt
	@rm -f $(VENV)/.security-*
	@touch $@

security-deps: $(SECURITY_STAMP)

## The long API fuzz (>= 5,000 schemathesis cases, about two minutes; `make test` runs a quick pass).
fuzz: security-deps
	LLAMAWOOL_FUZZ_EXAMPLES=180 $(VENV)/bin/pytest -q tests/security/test_fuzz_api.py
