# ebpfguard: set-up, run and test. Run as root on Debian 12 / Ubuntu.
SHELL := /bin/bash
PY ?= /usr/bin/python3
VENV := .venv
STATE ?= /var/lib/ebpfguard
KREL := $(shell uname -r)

.PHONY: setup deps headers venv run test test-unit test-kernel test-vm vm-deps guest-tier guest-service vagrant-check lint bench \
	bench-quick \
	deb clean

setup: deps headers venv

# Debian packages: bcc and its Python binding, kernel headers, venv, gcc for the helpers the tests,
# Debian's own Python libraries (what the .deb depends on: make deb's test installs it here), prometheus
# for promtool (the alert rules' unit tests),
# the simulator and the benchmark build; auditd and bpftrace, the peers `ebpfguard bench` measures;
# xdg-dbus-proxy, which filters each instance's D-Bus; python3-seccomp, libseccomp's syscall table.
# The desktop components the tests start for real: dbus-daemon and dbus-test-tool (a service that owns a name and answers), Xvfb, xdotool and
# xwininfo (x11-utils), ssh-agent and ssh-keygen (openssh-client). jq and curl: real programs the learn
# round trip learns a manifest for. python3-jupyter-client, python3-ipykernel and python3-pylsp: the platforms
# docs/recipes.md launches through ebpfguard (a notebook kernel, a language server), tested as a user.
# python3-jeepney, the D-Bus library of `ebpfguard notify`; notification-daemon, the real notification server
# its tests show notices on (under Xvfb). rsyslog and rsyslog-relp: the fleet's log pipeline the records are
# forwarded through in the tests (journald -> a host rsyslog -> RELP or TCP -> a central rsyslog).
PKGS := python3-bpfcc libbpfcc python3-venv gcc libc6-dev linux-libc-dev iproute2 auditd bpftrace \
	xdg-dbus-proxy dbus-daemon dbus-bin dbus-tests xvfb xdotool x11-utils openssh-client \
	python3-click python3-yaml python3-jsonschema python3-cryptography python3-prometheus-client python3-psutil \
	python3-jeepney notification-daemon rsyslog rsyslog-relp \
	python3-seccomp prometheus jq curl python3-jupyter-client python3-ipykernel python3-pylsp
deps:
	@dpkg -s $(PKGS) >/dev/null 2>&1 || { \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(PKGS) ; }

# bcc needs headers for the running kernel. Use the matching package when it exists, otherwise link
# Debian's generic headers (enough for tracepoint args, helpers and UAPI structs: see docs/install.md).
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
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-kernel: setup
	$(VENV)/bin/python -m ebpfguard.kernel.probe --require
	$(VENV)/bin/pytest -q -rs --durations=15 tests/kernel tests/e2e

# The VM tier: the kernel tier again in a guest on Debian's own kernel (6.1, tests/vm/egvm.py), under
# qemu's software emulation, pure cgroup v2: once with bpf among the LSMs (it fails, never skips, when
# the BPF-LSM programs cannot be used there) and once without (tracepoints and Landlock ABI 2).
# linux-image-amd64 and linux-headers-amd64 are installed together so that their versions match.
VM_PKGS := qemu-system-x86 busybox-static cpio kmod linux-image-amd64 linux-headers-amd64
VM_TIMEOUT ?= 1800
vm-deps:
	@dpkg -s $(VM_PKGS) >/dev/null 2>&1 || { apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(VM_PKGS) ; }

test-vm: setup vm-deps
	@rc=0; \
	s=$$(date +%s); $(PY) tests/vm/egvm.py run --lsm --timeout $(VM_TIMEOUT) --env EG_REQUIRE_LSM=1 -- \
	  $(MAKE) --no-print-directory guest-tier GUEST_E2E="$(GUEST_E2E)" || rc=1; \
	echo "== guest with BPF-LSM: $$(( $$(date +%s) - s )) s"; \
	s=$$(date +%s); $(PY) tests/vm/egvm.py run --no-lsm --timeout $(VM_TIMEOUT) -- \
	  $(MAKE) --no-print-directory guest-tier GUEST_E2E= || rc=1; \
	echo "== guest without BPF-LSM: $$(( $$(date +%s) - s )) s"; \
	s=$$(date +%s); $(PY) tests/vm/egvm.py run --systemd --lsm --timeout $(VM_TIMEOUT) -- \
	  $(MAKE) --no-print-directory guest-service || rc=1; \
	echo "== guest with systemd: $$(( $$(date +%s) - s )) s"; \
	exit $$rc

# run inside the guest by test-vm: what the kernel has, then the kernel tier's tests whose outcome depends on
# the kernel (marked guest in tests/kernel/conftest.py: the hooks that decide, cgroup v2, the ABI). A compile
# costs minutes under emulation: the first Sensor of the guest's boot compiles and keeps its set in bpffs
# (kernel/kept.py), every later one opens it; the e2e tests run after the kernel tier's session (and its engine,
# which holds its set) ended, so that their agents take that set over. The tier's engine fixture fails
# (never skips) when the programs cannot be loaded, or, in the BPF-LSM guest (EG_REQUIRE_LSM), when they load
# without their LSM half; the probe only prints what the kernel has. The e2e tests run in the BPF-LSM guest.
guest-tier:
	@test -n "$$EGVM_KERNEL" || { echo "guest-tier runs inside the VM tier's guest: use make test-vm"; exit 2; }
	$(VENV)/bin/python -m ebpfguard.kernel.probe
	@rc=0; $(VENV)/bin/pytest -q -rfEsx -p no:cacheprovider --durations=10 -m "guest or e2e" tests/kernel || rc=1; \
	if [ -n "$(GUEST_E2E)" ]; then \
	  $(VENV)/bin/pytest -q -rfEsx -p no:cacheprovider --durations=10 $(GUEST_E2E) || rc=1; fi; exit $$rc

# run inside the guest by test-vm with systemd as PID 1: the Debian package's unit as systemd runs it
guest-service:
	@test -n "$$EGVM_KERNEL" || { echo "guest-service runs inside the VM tier's guest: use make test-vm"; exit 2; }
	$(VENV)/bin/pytest -q -rfEsx -s -p no:cacheprovider tests/service

# The e2e tests whose outcome depends on the kernel: re-adoption and what the kept programs recorded while no
# agent ran, a user's launch and the record BPF-LSM makes of its refused read
GUEST_E2E := tests/e2e/test_agent.py::test_layers_hold_while_the_agent_is_dead_and_a_new_agent_readopts \
	tests/e2e/test_users.py::test_a_user_launches_their_own_manifest_and_a_credential_read_fails

# vagrant/: the Vagrantfile users bring a stock kernel up with, validated where vagrant installs
vagrant-check:
	@if ! command -v vagrant >/dev/null; then \
	  if apt-cache show vagrant >/dev/null 2>&1; then apt-get update && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends vagrant; \
	  else echo "vagrant is not installable here: vagrant/Vagrantfile not validated"; exit 0; fi; fi; \
	cd vagrant && vagrant validate --ignore-provider && sh -n provision-kernel.sh && sh -n provision-ebpfguard.sh

# every tier; the kernel tier fails (never skips) when eBPF cannot be loaded
test: setup
	@t0=$$(date +%s); \
	for tier in lint test-unit test-kernel vagrant-check test-vm bench-quick; do \
	  s=$$(date +%s); $(MAKE) --no-print-directory $$tier || exit 1; \
	  echo "== tier $$tier: $$(( $$(date +%s) - s )) s"; \
	done; echo "== make test: $$(( $$(date +%s) - t0 )) s"

bench-quick: setup
	$(VENV)/bin/ebpfguard bench --quick

# build/ebpfguard_VERSION_all.deb: the package with bpf/ and policies/ inside, /usr/bin/ebpfguard, the units
deb: venv
	contrib/deb/build.sh $(VENV)/bin/pip build

bench: setup
	$(VENV)/bin/ebpfguard bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build
