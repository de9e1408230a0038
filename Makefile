# postfleet: the README's two commands (`make run`, `make test`) and dev chores.
# Everything installs into .venv; uv itself is bootstrapped if missing.

UV := $(shell command -v uv 2>/dev/null || echo .tools/uv/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/quickstart/postfleet.yaml
PYTEST_ARGS ?=

.PHONY: install run test lint peers proto bench chaos clean

install: $(VENV)/.installed

$(VENV)/.installed: Makefile pyproject.toml uv.lock libs/core/pyproject.toml $(wildcard services/*/pyproject.toml) $(wildcard operator/pyproject.toml)
	@scripts/ensure-uv
	$(UV) sync --frozen --all-packages --compile-bytecode
	@# Bytecode for the workspace's own sources too: where PYTHONDONTWRITEBYTECODE
	@# is set (this machine, CI), every role process would otherwise compile
	@# them again at each start.
	$(BIN)/python -m compileall -q libs/core/src services/*/src operator/src src
	@touch $@

run: install
	$(BIN)/postfleet run all --config $(CONFIG)

# Debian packages of the real peers the tests talk to (swaks, Postfix's
# smtp-source/smtp-sink, dnsmasq, Dovecot, spamd, clamd, amavisd-new, pflogsumm).
# Installed only when missing.
peers:
	@scripts/install-peers

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install peers lint
	$(BIN)/pytest $(PYTEST_ARGS)

proto: install
	$(BIN)/python scripts/gen_proto.py

# postfleet beside a private Postfix on the same workload, in one run
# (bench/README.md keeps the latest table); `make chaos` kills random role
# processes under load and counts what was lost or duplicated.
bench: install peers
	$(BIN)/python bench/compare.py

chaos: install peers
	$(BIN)/python bench/chaos.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
