# ebpfguard: set-up, run and test. Run as root on Debian 12 / Ubuntu.
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
STATE ?= /var/lib/ebpfguard
KREL := $(shell uname -r)

.PHONY: setup deps headers venv run test test-unit test-kernel lint bench clean

setup: deps headers venv

# Debian packages: bcc and its Python binding, kernel headers, venv, gcc for the helpers the tests,
# the simulator and the benchmark build; auditd and bpftrace, the peers `ebpfguard bench` measures;
# xdg-dbus-proxy, which filters each instance's D-Bus. The desktop components the tests start for real:
# dbus-daemon and dbus-test-tool (a service that owns a name and answers), Xvfb, xdotool and
# xwininfo (x11-utils), ssh-agent and ssh-keygen (openssh-client).
PKGS := python3-bpfcc libbpfcc python3-venv gcc libc6-dev linux-libc-dev iproute2 auditd bpftrace \
	xdg-dbus-proxy dbus-daemon dbus-bin dbus-tests xvfb xdotool x11-utils openssh-client
deps:
	@dpkg -s $(PKGS) >/dev/null 2>&1 || { \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(PKGS) ; }

# bcc needs headers for the running kernel. Use the matching package when it exists, otherwise link
# Debian's generic headers (enough for tracepoint args, helpers and UAPI structs: see README).
headers:
	@if [ -e /lib/modules/$(KREL)/build/include ]; then exit 0; fi; \
	if apt-cache show linux-headers-$(KREL) >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y linux-headers-$(KREL); exit 0; fi; \
	ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-headers-amd64; }; \
	arch=$$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1); \
	common=$$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -1); \
	echo "no headers package for $(KREL): linking $$arch"; \
	mkdir -p /lib/modules/$(KREL); \
	ln -sfn $$arch /lib/modules/$(KREL)/build; ln -sfn $$common /lib/modules/$(KREL)/source

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/python -c 'import bcc' || { echo "the venv cannot import bcc (python3-bpfcc)"; exit 1; }
	touch $@

venv: $(VENV)/.installed

run: setup
	$(VENV)/bin/ebpfguard agent --state-dir $(STATE) --policy-dir policies

lint: venv
	$(VENV)/bin/ruff check ebpfguard tests
	$(VENV)/bin/mypy ebpfguard

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-kernel: setup
	$(VENV)/bin/python -m ebpfguard.kernel.probe --require
	$(VENV)/bin/pytest -q -rs tests/kernel tests/e2e

# every tier; the kernel tier fails (never skips) when eBPF cannot be loaded
test: setup lint test-unit test-kernel
	$(VENV)/bin/ebpfguard bench --quick

bench: setup
	$(VENV)/bin/ebpfguard bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
