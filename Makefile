# Two commands on a fresh machine (Debian 12, Python 3.11, root or sudo for apt):
#   make render   # the main job: render every example claim through the function over gRPC
#   make test     # the test suite (installs what it needs first)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES = cloud-init debootstrap shellcheck nix-bin

.PHONY: deps render test test-fast lint bench serve

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(PIP) install -q -e '.[dev,discovery]'

render: deps
	$(PYTHON) -m tools.render

test: deps
	$(PYTHON) -m pytest -q -p no:cacheprovider

test-fast: deps
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check .
	ruff format --check .
	mypy function tools

bench: deps
	$(PYTHON) -m bench.scheduler
	$(PYTHON) -m bench.latency

serve: deps
	$(PYTHON) -m function.main --insecure --debug
