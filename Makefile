# Two commands on a fresh machine (Debian 12, Python 3.11, root or sudo for apt):
#   make render   # the main job: render every example claim through the function over gRPC
#   make test     # the test suite (installs what it needs first)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES = cloud-init debootstrap shellcheck nix-bin docker.io

.PHONY: deps render-deps tools render test test-fast lint bench serve docker-env docker-stop cluster-docs

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(PIP) install -q -e '.[dev,discovery]'

# The real tools that judge every output (Crossplane CLI 1.16/1.20/2.0, Terraform 1.5.5, the
# pinned bpg/proxmox provider), built from Go modules into $(FABRIC_TOOLS) (default
# ~/.cache/fabric-tools) and reused while their pinned versions (tools/versions.env) hold.
tools:
	bash tools/build-tools.sh

# README's `kubectl get machines` / `kubectl describe machine` output, captured from a real
# cluster on this machine (tools/cluster.py: etcd, kube-apiserver, Crossplane core, the function).
cluster-docs: deps tools
	$(PYTHON) -m tools.cluster docs

# A Docker daemon without a registry, for tests/test_image.py (which starts it itself as root).
docker-env:
	bash tools/docker-env.sh
docker-stop:
	bash tools/docker-env.sh stop

# `make render` needs only the project itself: no Debian packages, no dev or discovery extras.
render-deps:
	$(PIP) install -q -e .

render: render-deps
	$(PYTHON) -m tools.render $(RENDER_ARGS)

test: deps tools
	$(PYTHON) -m pytest -q -p no:cacheprovider

test-fast: deps tools
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check .
	ruff format --check .
	mypy function tools fabric_discover
	shellcheck -x tools/*.sh .ci/run

bench: deps
	$(PYTHON) -m bench.scheduler
	$(PYTHON) -m bench.latency

serve: deps
	$(PYTHON) -m function.main --insecure --debug
