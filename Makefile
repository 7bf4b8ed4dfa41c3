# dedupd: `make demo` shows it working, `make test` proves it. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Every real component the tests use (see DESIGN.md). --no-install-recommends keeps
# rmlint from pulling a desktop in.
DEB_PACKAGES := btrfs-progs xfsprogs duperemove zfs-fuse mergerfs fuse3 rclone \
	postgresql jdupes rmlint fdupes attr acl zstd pigz socat time rsync \
	e2fsprogs util-linux python3-venv systemd

.PHONY: deps debs venv test test-unit lint bench demo install clean

deps: debs venv

debs:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: deps
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/pytest -q -ra tests/unit

lint: venv
	$(BIN)/ruff check dedupd tests bench
	$(BIN)/mypy

bench: deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

demo: deps
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
