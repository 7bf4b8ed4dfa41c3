# dedupd: `make demo` shows it working, `make test` proves it. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Every real component the tests use (tests/fixtures/). --no-install-recommends keeps
# rmlint from pulling a desktop in.
DEB_PACKAGES := btrfs-progs xfsprogs duperemove zfs-fuse mergerfs fuse3 rclone \
	postgresql jdupes rmlint fdupes attr acl zstd pigz socat time rsync \
	e2fsprogs util-linux python3-venv systemd awscli dosfstools fusefat

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

# The checkout on the path by a plain .pth line (setuptools' compat editable mode):
# the default editable install imports a finder (pathlib, urllib...) at every
# interpreter start, 10 ms of each `dedupd` command that an installed dedupd
# (`make install`) does not pay. Where that mode is gone, the default one.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat 2>/dev/null \
		|| $(BIN)/pip install -q -e '.[dev]'
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

# `make install`: the package in its own venv (PREFIX), the command in BINDIR,
# the systemd units, the example config and the docs. DESTDIR stages it (the
# venv then runs from DESTDIR: install without DESTDIR on the target host).
PREFIX ?= /opt/dedupd
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/dedupd
DOCDIR ?= /usr/local/share/doc/dedupd
# Where bash-completion, zsh (Debian's default fpath) and man look for files
# of locally installed software.
DATAROOT ?= /usr/local/share
BASHCOMPDIR ?= $(DATAROOT)/bash-completion/completions
ZSHCOMPDIR ?= $(DATAROOT)/zsh/site-functions
MANDIR ?= $(DATAROOT)/man

install:
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install -q --upgrade pip
	$(DESTDIR)$(PREFIX)/bin/pip install -q .
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	ln -sf $(PREFIX)/bin/dedupd $(DESTDIR)$(BINDIR)/dedupd
	for u in systemd/*.service systemd/*.timer; do \
		sed 's|/usr/local/bin/dedupd|$(BINDIR)/dedupd|' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	install -d -m 0755 $(DESTDIR)$(CONFDIR)
	install -m 0644 etc/dedupd.toml $(DESTDIR)$(CONFDIR)/dedupd.toml.example
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/
	if [ -d docs ]; then install -m 0644 docs/*.md $(DESTDIR)$(DOCDIR)/; fi
	@# completion and man page, generated from the installed parser (dedupd/shellfiles.py)
	gen=$$(mktemp -d) && $(DESTDIR)$(PREFIX)/bin/python -m dedupd.shellfiles $$gen >/dev/null && \
	install -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(MANDIR)/man1 && \
	install -m 0644 $$gen/dedupd.bash $(DESTDIR)$(BASHCOMPDIR)/dedupd && \
	install -m 0644 $$gen/_dedupd $(DESTDIR)$(ZSHCOMPDIR)/_dedupd && \
	install -m 0644 $$gen/dedupd.1 $(DESTDIR)$(MANDIR)/man1/dedupd.1 && \
	rm -rf $$gen
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; copy $(CONFDIR)/dedupd.toml.example to $(CONFDIR)/dedupd.toml, edit it,"
	@echo "then: systemctl enable --now dedupd"

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
