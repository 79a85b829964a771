# meshnet: `make demo`, `make test`, `make bench` work on a fresh Debian machine as root:
# they install the apt packages and the virtualenv they need, and are safe to repeat.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
APT_PKGS := iproute2 iputils-ping procps psmisc iptables nftables conntrack ipvsadm serf \
            dnsmasq-base dnsutils dnsperf iperf3 busybox-static tcpdump curl socat wrk docker.io
# for `make bench` only (the mesh benchmark's server, the DNS anchor); not started
BENCH_PKGS := nginx-light unbound
PYTEST_ARGS ?=

.PHONY: all deps apt venv lint unit netns test demo bench clean-lab help

help:
	@echo "make demo   - build a 3-host lab and show meshnet working (leaves it up)"
	@echo "make test   - lint, unit tests and real-kernel tests"
	@echo "make bench  - run benchmarks, rewrite docs/benchmarks.md"

deps: apt venv

apt: .stamp-apt
.stamp-apt: Makefile
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "meshnet needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

lint: venv
	$(BIN)/ruff check meshnet tests netns-tests bench

unit: venv
	$(BIN)/pytest tests $(PYTEST_ARGS)

netns: deps
	$(BIN)/pytest netns-tests -p no:cacheprovider $(PYTEST_ARGS)

# The suite fails if anything meshnet owns (namespace, link, rule) is left behind.
test: deps lint
	@$(PY) -m meshnet.testing.leftovers snapshot > .leftovers-before
	$(BIN)/pytest tests $(PYTEST_ARGS)
	$(BIN)/pytest netns-tests -p no:cacheprovider $(PYTEST_ARGS)
	@$(PY) -m meshnet.testing.leftovers compare .leftovers-before

demo: deps
	@bash scripts/demo.sh

bench: deps
	@for p in $(BENCH_PKGS); do dpkg -s $$p >/dev/null 2>&1 || { \
	  echo "installing $$p (not started: policy-rc.d)"; \
	  test -e /usr/sbin/policy-rc.d || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod +x /usr/sbin/policy-rc.d; touch .policy-rc-ours; }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$p >/dev/null; \
	  if test -e .policy-rc-ours; then rm -f /usr/sbin/policy-rc.d .policy-rc-ours; fi; }; done
	$(PY) -m bench.run

clean-lab: venv
	$(BIN)/meshnet cleanup
